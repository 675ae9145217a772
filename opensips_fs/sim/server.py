"""``FsSimulator``: one simulated FreeSWITCH box (mod_event_socket, inbound)
served by gevent greenlets on a TCP listener, plus the library API tests use
to drive it (raise/push events, bursts, faults, state).

The box is built from one ``SimSettings``. Each accepted connection gets a
``SimClient`` with a reader greenlet (bytes -> ``commands.CommandParser`` ->
``session.handle``) and a writer greenlet (drains the client's ordered frame
queue). Events are built once per delivery (``events.Event``) and serialised
once per format; generated load (bursts, a steady rate) is ``load.py``'s.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import gevent
import orjson
from gevent.event import Event as GEvent
from gevent import socket  # cooperative even without monkey-patching

from ..jsonenc import dumps
from . import api
from .calls import CallEngine
from .client import SimClient
from .events import VERSIONS, Event, Identity, is_event_name
from .listener import Listener
from .load import LoadGenerator
from .notices import BYE, NOTICE_BYE, SHUTDOWN, notice_frame
from .session import log_level
from .settings import SimSettings, SimUser

__all__ = ["FsSimulator"]

GREETING = b"Content-Type: auth/request\n\n"
REJECTION = b"Content-Type: text/rude-rejection\nContent-Length: 24\n\nAccess Denied, go away.\n"

CALLING_HEARTBEAT = ("switch_core.c", "send_heartbeat", 95)
CALLING_RESCHEDULE = ("switch_scheduler.c", "switch_scheduler_execute", 73)
CALLING_API = ("switch_loadable_module.c", "switch_api_execute", 3140)
CALLING_BGJOB = ("mod_event_socket.c", "api_exec", 1580)
CALLING_SENDEVENT = ("mod_event_socket.c", "parse_command", 2283)
CALLING_RAISE = ("switch_event.c", "switch_event_fire_detailed", 2050)

_LEVEL_NAMES = ("CONSOLE", "ALERT", "CRIT", "ERR", "WARNING", "NOTICE", "INFO", "DEBUG")

log = logging.getLogger("opensips_fs.sim")

_T = TypeVar("_T")


class FsSimulator:
    """A FreeSWITCH Event Socket stand-in; see the package docstring."""

    def __init__(self, settings: SimSettings | None = None):
        self.settings = settings = settings or SimSettings()
        self.host = settings.host
        self.port = settings.port  # the bound port once started
        self.password = settings.password  # ``set_password`` changes it
        self.users = list(settings.users)
        self.acl = [ipaddress.ip_network(n, strict=False) for n in settings.acl] if settings.acl else None
        self.clock = settings.clock or time.time
        self._rng = random.Random(settings.seed) if settings.seed is not None else random.Random()
        fs = VERSIONS[settings.version] if isinstance(settings.version, str) else settings.version
        self.identity: Identity = Identity(
            hostname=settings.hostname, core_uuid=settings.core_uuid or self.new_uuid(),
            ipv4=settings.ipv4, ipv6=settings.ipv6, fs=fs)
        self.seq = 0
        self.started_at = self.clock()
        self.clients: list[SimClient] = []
        self._accepted = 0
        self._live: list[SimClient] = []
        self.calls = CallEngine(self, settings.call_duration)
        self.load = LoadGenerator(self)
        self.delay_ms = 0.0
        self.refusing = False
        self.lost_events = 0
        self.lost_log_lines = 0
        self.stopped = GEvent()
        self._unstalled = GEvent()
        self._unstalled.set()
        self._listener: Listener | None = None
        self._greenlets: list[gevent.Greenlet] = []
        self._cpu_mark = (time.monotonic(), sum(os.times()[:2]))
        self._idle = 100.0
        self._shutting_down = False

    # -- life cycle ----------------------------------------------------------
    @property
    def address(self) -> str:
        return "%s:%d" % (self.host, self.port)

    def start(self) -> "FsSimulator":
        self._bind()
        if self.settings.heartbeat and self.settings.heartbeat > 0:
            self._greenlets.append(gevent.spawn(self._heartbeat_loop))
        if self.settings.calls_per_second and self.settings.calls_per_second > 0:
            self._greenlets.append(gevent.spawn(self.calls.load_loop, self.settings.calls_per_second))
        return self

    def _bind(self) -> None:
        self._listener = Listener(self.host, self.port, self._accept).open()
        self.port = self._listener.port

    def _unbind(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def stop(self) -> None:
        """Close the listener and every client (no notice)."""
        self._unbind()
        for glet in self._greenlets:
            glet.kill(block=False)
        self._greenlets.clear()
        self.load.stop()
        self.calls.stop()
        self._close_all(None, "stopped")
        self.stopped.set()

    def __enter__(self) -> "FsSimulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def shutdown(self) -> None:
        """FreeSWITCH shutting down: the 31-byte notice to every client, close."""
        if self._shutting_down:
            return
        self._shutting_down = True
        self._unbind()
        self._close_all(SHUTDOWN, "shutdown")
        deadline = time.monotonic() + 2.0
        while self._live and time.monotonic() < deadline:
            gevent.sleep(0.01)
        self.stop()
        if self.settings.on_shutdown:
            self.settings.on_shutdown(self)

    def schedule_shutdown(self) -> None:
        """``fsctl shutdown``: the notice follows about 0.8 s later."""
        gevent.spawn_later(self.settings.shutdown_delay, self.shutdown)

    def _close_all(self, notice: bytes | None, reason: str) -> int:
        """Close every live connection: after ``notice`` and what is queued
        before it, or at once (nothing more sent) without one."""
        clients = list(self._live)
        for client in clients:
            if notice:
                client.close_with(notice, reason)
            else:
                client.abort(reason)
        return len(clients)

    # -- faults ----------------------------------------------------------------
    def drop(self, notice: bool = False) -> int:
        """Cut every client connection (with the 67-byte notice if asked)."""
        return self._close_all(BYE if notice else None, "dropped")

    def client(self, number: int) -> SimClient:
        """The client with this connection number (1-based accept order)."""
        for client in self.clients:
            if client.number == number:
                return client
        raise KeyError("no connection %d" % number)

    def stall(self, seconds: float, conn: int | None = None) -> None:
        """Stop reading and writing for ``seconds``: on every connection, or
        only on connection number ``conn`` (1-based accept order)."""
        flag = self._unstalled if conn is None else self.client(conn).unstalled
        flag.clear()
        gevent.spawn_later(seconds, flag.set)

    def wait_unstalled(self, client: SimClient | None = None) -> None:
        if not self._unstalled.is_set():
            self._unstalled.wait()
        if client is not None and not client.unstalled.is_set():
            client.unstalled.wait()

    def restart(self, down: float = 0.0, notice: bool = True) -> None:
        """Restart the listener: clients get the shutdown notice (or are cut),
        the port refuses for ``down`` seconds, then a fresh FreeSWITCH run
        (new Core-UUID unless one was fixed, uptime from zero) listens again."""
        self._unbind()
        self._close_all(SHUTDOWN if notice else None, "restart")
        self.calls.stop()
        if not self.settings.core_uuid:
            self.identity.core_uuid = self.new_uuid()
        self.started_at = self.clock()
        if down > 0:
            gevent.sleep(down)
        if not self.refusing:
            self._bind()

    def refuse(self, on: bool = True) -> None:
        """Refuse new connections (the port is closed) or accept them again."""
        on = bool(on)
        if on == self.refusing:
            return
        self.refusing = on
        if on:
            self._unbind()
        else:
            self._bind()

    def delay(self, ms: float) -> None:
        """Delay every reply by ``ms`` milliseconds (0 turns it off)."""
        self.delay_ms = max(0.0, float(ms))

    def set_password(self, password: str) -> None:
        self.password = password

    # -- clients ------------------------------------------------------------------
    def _accept(self, sock: socket.socket, addr: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self._accepted += 1
        client = SimClient(self, sock, "%s:%d" % (addr[0], addr[1]), self._accepted)
        log.info("%s: connection %d from %s", self.address, client.number, client.peer)
        self.clients.append(client)
        self._live.append(client)
        if self.acl is not None and not any(ipaddress.ip_address(addr[0]) in n for n in self.acl):
            client.reject(REJECTION, "access denied")
        else:
            client.start(GREETING)

    def client_closed(self, client: SimClient) -> None:
        """``client`` has closed: forget it (keeping ``keep_closed`` of the
        closed ones in ``clients``)."""
        keep = self.settings.keep_closed
        if keep is not None:
            closed = [c for c in self.clients if not c.alive and c is not client]
            for old in closed[:max(0, len(closed) - keep)]:
                self.clients.remove(old)
        log.info("%s: connection %d from %s closed (%s)", self.address, client.number, client.peer,
                 client.closed_reason or "closed")
        if client in self._live:
            self._live.remove(client)

    def state(self) -> dict:
        """The box and every connection (``conns``: what each sent, its
        subscriptions, counters), JSON-able."""
        return {
            "listen": self.address,
            "core_uuid": self.identity.core_uuid,
            "hostname": self.identity.hostname,
            "sequence": self.seq,
            "refusing": self.refusing,
            "delay_ms": self.delay_ms,
            "stalled": not self._unstalled.is_set(),
            "channels": len(self.calls.channels),
            "lost_events": self.lost_events,
            "lost_log_lines": self.lost_log_lines,
            "conns": [c.state() for c in self.clients if c.alive],
            "closed": [c.state() for c in self.clients if not c.alive],
        }

    def end_myevents(self, client: SimClient, uuid: str) -> None:
        """The channel a ``myevents`` connection follows has ended: the
        myevents disconnect notice, then close (docs/protocols/esl.md §2, §6.6)."""
        extra = b"Controlled-Session-UUID: %s\nContent-Disposition: disconnect\n" % uuid.encode()
        client.close_with(notice_frame(NOTICE_BYE, extra), "myevents channel ended")

    def find_user(self, name: str) -> SimUser | None:
        for user in self.users:
            if user.name == name:
                return user
        return None

    def live_clients(self) -> list[SimClient]:
        return list(self._live)

    def subscribers(self, event: Event) -> list[SimClient]:
        """The live clients that want ``event``."""
        return [c for c in self._live if c.wants(event)]

    @property
    def shutting_down(self) -> bool:
        """True once ``shutdown`` has begun."""
        return self._shutting_down

    def wait_clients(self, n: int, timeout: float = 5.0) -> list[SimClient]:
        """Wait until ``n`` clients are connected and authenticated."""
        deadline = time.monotonic() + timeout
        while True:
            ready = [c for c in self._live if c.authed]
            if len(ready) >= n:
                return ready
            if time.monotonic() >= deadline:
                raise TimeoutError("%d authenticated client(s), wanted %d" % (len(ready), n))
            gevent.sleep(0.005)

    def log(self, message: str) -> None:
        log.warning("%s: %s", self.address, message)

    def wait_for(self, predicate: Callable[[], _T | None], timeout: float = 5.0, what: str = "condition") -> _T:
        """Poll ``predicate()`` (every 5 ms, cooperatively) until it returns
        something true, which is returned; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError("timed out waiting for %s" % what)
            gevent.sleep(0.005)

    def wait_command(self, text: str, timeout: float = 5.0) -> SimClient:
        """Wait until some client has sent exactly the command ``text``
        (e.g. ``"event json DTMF"``); returns that client."""
        def find() -> SimClient | None:
            for client in self.clients:
                if text in client.commands:
                    return client
            return None
        return self.wait_for(find, timeout, "command %r" % text)

    # -- identity, clock, ids ---------------------------------------------------
    def new_uuid(self) -> str:
        return str(uuidlib.UUID(int=self._rng.getrandbits(128), version=4))

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def skip_seq(self, count: int) -> None:
        """Reserve the next ``count`` Event-Sequence numbers (a generated
        series numbers its events itself)."""
        self.seq += count

    def uptime_us(self) -> int:
        return int((self.clock() - self.started_at) * 1_000_000)

    def idle_cpu(self) -> float:
        if self.settings.idle_cpu is not None:
            return self.settings.idle_cpu
        now = time.monotonic()
        cpu = sum(os.times()[:2])
        last_t, last_cpu = self._cpu_mark
        if now - last_t >= 0.5:
            busy = (cpu - last_cpu) / (now - last_t) * 100.0
            self._idle = max(0.0, min(100.0, 100.0 - busy))
            self._cpu_mark = (now, cpu)
        return self._idle

    def session_stats(self) -> dict:
        stats = self.calls.stats()
        stats["max_sessions"] = self.settings.max_sessions
        return stats

    # -- events -------------------------------------------------------------------
    def make_event(self, name: str, headers: Iterable[tuple[str, str]] = (), body: str | None = None,
                   subclass: str | None = None, calling: tuple[str, str, int] = CALLING_RAISE) -> Event:
        seq = self.next_seq()
        all_headers = self.identity.common(name, self.clock(), seq, calling)
        if subclass:
            all_headers.insert(0, ("Event-Subclass", subclass))
        all_headers.extend(headers)
        return Event(name, all_headers, body, subclass, seq)

    def fire(self, event: Event) -> int:
        """Deliver one event to every client that wants it; returns how many."""
        sent = 0
        for client in self._live:
            if client.wants(event):
                client.enqueue_event(event.frame(client.format), 1, event.seq)
                sent += 1
        return sent

    def raise_event(self, name: str, headers: dict[str, Any] | Iterable[tuple[Any, Any]] | None = None,
                    body: str | None = None, subclass: str | None = None,
                    calling: tuple[str, str, int] = CALLING_RAISE) -> int:
        """Fire a full FreeSWITCH event (common header block + ``headers``) to
        the subscribed clients, each in its format; returns connections sent to."""
        if isinstance(headers, dict):
            headers = list(headers.items())
        headers = [(str(k), str(v)) for k, v in (headers or [])]
        canonical = is_event_name(name) or name
        if canonical == "CUSTOM" and subclass is None:
            for k, v in headers:
                if k.lower() == "event-subclass":
                    subclass = v
            headers = [h for h in headers if h[0].lower() != "event-subclass"]
        return self.fire(self.make_event(canonical, headers, body, subclass, calling))

    def fire_sendevent(self, name: str, subclass: str | None, headers: list[tuple[str, str]],
                       body: str | None) -> int:
        seq = self.next_seq()
        common = self.identity.common(name, self.clock(), seq, CALLING_SENDEVENT)
        return self.fire(Event(name, list(headers) + common, body, subclass, seq))

    def push_event(self, body: dict[str, Any] | str | bytes, content_type: str = "text/event-json",
                   force: bool = False) -> int:
        """Frame this exact body (a dict becomes compact JSON) and send it to
        every authenticated client subscribed to the event it names (by name,
        or ALL), to every client with events on if it names none, or to every
        authenticated client with ``force``."""
        if isinstance(body, dict):
            body = dumps(body)
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogateescape")
        name = _event_name_of(body, content_type)
        data = b"Content-Length: %d\nContent-Type: %s\n\n%s" % (len(body), content_type.encode(), body)
        sent = 0
        for client in self._live:
            if not client.authed:
                continue
            if not force:
                if not client.events_on:
                    continue
                if name and not client.all_events and name.upper() not in client.event_list:
                    continue
            client.enqueue_event(data)
            sent += 1
        return sent

    def push_raw(self, data: bytes | str) -> int:
        """Write these exact bytes to every authenticated client."""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        sent = 0
        for client in self._live:
            if client.authed:
                client.send_frame(data)
                sent += 1
        return sent

    def fire_heartbeat(self) -> int:
        stats = self.session_stats()
        up = self.uptime_us()
        sent = self.raise_event("HEARTBEAT", [
            ("Event-Info", "System Ready"),
            ("Up-Time", api.format_uptime(up)),
            ("FreeSWITCH-Version", self.identity.version),
            ("Uptime-msec", str(up // 1000)),
            ("Session-Count", str(stats["count"])),
            ("Max-Sessions", str(self.settings.max_sessions)),
            ("Session-Per-Sec", str(stats["max_per_sec"])),
            ("Session-Per-Sec-Last", str(stats["per_sec_last"])),
            ("Session-Per-Sec-Max", str(stats["per_sec_peak"])),
            ("Session-Per-Sec-FiveMin", str(stats["per_sec_5min"])),
            ("Session-Since-Startup", str(stats["since_startup"])),
            ("Session-Peak-Max", str(stats["peak"])),
            ("Session-Peak-FiveMin", str(stats["peak_5min"])),
            ("Idle-CPU", "%f" % self.idle_cpu()),
        ], calling=(CALLING_HEARTBEAT[0], CALLING_HEARTBEAT[1], self.identity.fs.heartbeat_line))
        self.raise_event("RE_SCHEDULE", [
            ("Task-ID", "1"),
            ("Task-Desc", "heartbeat"),
            ("Task-Group", "core"),
            ("Task-Runtime", str(int(self.clock() + (self.settings.heartbeat or 20)))),
        ], calling=CALLING_RESCHEDULE)
        return sent

    def _heartbeat_loop(self) -> None:
        while True:
            gevent.sleep(self.settings.heartbeat)
            self.fire_heartbeat()

    # -- api ---------------------------------------------------------------------
    def run_api(self, name: str, arg: str) -> str:
        api_event = self.make_event("API", _api_headers(name, arg), calling=CALLING_API)
        output = api.execute(self, name, arg)
        self.fire(api_event)
        return output

    def spawn_bgapi(self, name: str, arg: str, job: str) -> None:
        gevent.spawn(self._bgapi, name, arg, job)

    def _bgapi(self, name: str, arg: str, job: str) -> None:
        output = self.run_api(name, arg)
        headers = [("Job-UUID", job), ("Job-Command", name)]
        if arg:
            headers.append(("Job-Command-Arg", arg))
        self.fire(self.make_event("BACKGROUND_JOB", headers, output, calling=CALLING_BGJOB))

    def log_line(self, level: str, text: str, file: str = "mod_commands.c",
                 func: str = "log_function", line: int = 7247) -> int:
        """A FreeSWITCH log line to every client that asked for that level."""
        lvl = log_level(level)
        if lvl is None:
            lvl = 7
        lvl = min(lvl, 7)
        now = self.clock()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + ".%06d" % int((now % 1) * 1e6)
        body = ("%s %.2f%% [%s] %s:%d %s\n" % (stamp, self.idle_cpu(), _LEVEL_NAMES[lvl], file, line, text)).encode(
            "utf-8", "surrogateescape")
        data = (b"Content-Type: log/data\nContent-Length: %d\nLog-Level: %d\nText-Channel: 3\n"
                b"Log-File: %s\nLog-Func: %s\nLog-Line: %d\nUser-Data: \n\n%s") % (
            len(body), lvl, file.encode(), func.encode(), line, body)
        sent = 0
        for client in self._live:
            if client.log_level is not None and client.log_level >= lvl:
                client.enqueue_log(data)
                sent += 1
        return sent

    # -- load ------------------------------------------------------------------
    def burst(self, count: int, name: str = "CUSTOM", subclass: str | None = "sim::burst",
              size: int | None = None, chunk: int = 500, window: int = 20000,
              body_size: int | None = None) -> int:
        """Send ``count`` events, each with a unique Event-Sequence, as fast as
        each subscribed client reads (back-pressure, no loss). Returns the
        number of events generated; blocks the calling greenlet until all are
        queued."""
        return self.load.burst(count, name, subclass, size, chunk, window, body_size)

    def event_rate(self, per_second: float, name: str = "CUSTOM", subclass: str | None = "sim::load",
                   size: int | None = None, body_size: int | None = None) -> None:
        """Fire ``per_second`` events per second for ever (0 stops it), in
        10 ms batches, each with a unique Event-Sequence; unlike ``burst``
        there is no back-pressure: a slow reader loses events as it would
        with FreeSWITCH."""
        self.load.set_rate(per_second, name, subclass, size, body_size)


def _api_headers(name: str, arg: str) -> list[tuple[str, str]]:
    headers = []
    if name.strip():
        headers.append(("API-Command", name.strip()))
    if arg.strip():
        headers.append(("API-Command-Argument", arg.strip()))
    return headers


def _event_name_of(body: bytes, content_type: str) -> str | None:
    if "json" in content_type:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if isinstance(obj, dict):
            name = obj.get("Event-Name")
            return name if isinstance(name, str) else None
        return None
    for line in body.split(b"\n"):
        if line.startswith(b"Event-Name: "):
            return line[12:].decode("utf-8", "replace")
        if not line:
            break
    return None

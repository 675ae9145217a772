"""The ESL connection manager: OpenSIPS's `freeswitch` module (ESL.md §10,
FSS.md §1, §2.2, §2.3, §7.3, §9).

* Sockets are identified by the exact host string and port; a password is
  needed only to create one. Each socket has a supervisor greenlet that
  connects, logs in, subscribes, and reconnects: at once after a loss, then
  every 1/5/10/30/90 s, stepping every 20 consecutive failures.
* Subscriptions are reference sums per event name (names stored and sent as
  given, delivered case-insensitively). A change goes on the wire as soon as
  it is made [EMU]: `event json NAME` when a sum leaves 0, `nixevent NAME`
  when it returns to 0 on a socket that stays open — one command per event,
  in first-subscribed order. A name FreeSWITCH refuses stays pending and is
  retried every second at first [OS], then less and less often (up to every
  30 s), and is reported (`status()`, log, `subscribe_rejected`).
* After every (re)connection all subscribed names are sent again, and events
  are held until FreeSWITCH has answered all of them; then delivery resumes.
* Lifetime: the last `unref()` closes the socket at once (no `nixevent`)
  unless `command()` used it; such an ESL-used socket lives until
  `fs_no_esl_timeout` seconds pass without a command, or 100 consecutive
  failed connection attempts. A socket nobody references or uses is reaped.
* Events: each `text/event-json` frame's `Event-Name` is read without a JSON
  parse; subscribed ones go to `event_sink(socket, name, body)` in the reader
  greenlet (it must not block) and to every consumer added with
  `add_consumer()` through a bounded queue. Everything else is dropped and
  counted. HEARTBEAT refreshes the socket's load figures.
* One manager greenlet ticks: it reaps sockets once a second and asks every
  connection to check its liveness (idle probe, silence bound) often enough
  for the configured bounds.
"""

from __future__ import annotations

import collections
import datetime
import logging
import time

import gevent
import gevent.event
import orjson

from ..stats import Stats
from .connection import (
    EslAuthError,
    EslConnectError,
    EslConnection,
    EslError,
    EslNotConnected,
    EslReply,
    EslTimeout,
)
from .protocol import CT_EVENT_JSON, DEFAULT_MAX_BODY, event_command, event_name, nixevent_command

__all__ = [
    "EslConsumer",
    "EslManager",
    "EslNoPassword",
    "EslSocket",
    "backoff_gap",
    "rejected_retry_gap",
]

log = logging.getLogger("opensips_fs.esl")

DEFAULT_PORT = 8021
STATS_GROUP = "freeswitch"
TICK = 1.0
ESL_ONLY_MAX_ATTEMPTS = 100
UNUSED_GRACE = 2.0  # a socket from get() that nobody refs or uses within this is reaped
HOLD_LIMIT = 100_000  # events held while resubscribing after a reconnect


class EslNoPassword(EslError):
    """A socket cannot be created without a password."""


def backoff_gap(failures: int) -> float:
    """Seconds before the next attempt after `failures` consecutive failures
    (ESL.md §10.3)."""
    if failures < 20:
        return 1.0
    if failures < 40:
        return 5.0
    if failures < 60:
        return 10.0
    if failures < 80:
        return 30.0
    return 90.0


def rejected_retry_gap(rejections: int) -> float:
    """Seconds before re-sending an `event json NAME` FreeSWITCH refused
    `rejections` times in a row: 1 s ten times (OpenSIPS retries every tick),
    then 2, 4, 8, 16, 30, 30… s."""
    if rejections <= 10:
        return 1.0
    return float(min(30, 2 ** (rejections - 10)))


class _Sub:
    """One event name on one socket: its reference sum and wire state."""

    __slots__ = ("name", "refs", "state", "rejections", "retry_at")

    PENDING, SENDING, ACTIVE, NIXING = "pending", "sending", "active", "nixing"

    def __init__(self, name: str):
        self.name = name
        self.refs = 0
        self.state = _Sub.PENDING
        self.rejections = 0
        self.retry_at = 0.0


class _Counters:
    __slots__ = ("events_received", "events_relayed", "events_dropped", "events_queue_dropped",
                 "reconnects", "connect_failures", "commands", "command_timeouts", "subscribe_rejected",
                 "late_replies", "sink_errors")

    def __init__(self, stats: Stats):
        for name in self.__slots__:
            setattr(self, name, stats.counter(STATS_GROUP, name))


class EslSocket:
    """One FreeSWITCH (host string, port): connection, credentials,
    references, subscriptions, load figures."""

    def __init__(self, manager: "EslManager", host: str, port: int, username: str | None, password: str):
        self._manager = manager
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.username = username or None
        self._password = password
        self.db_provisioned = False
        self.refs = 0
        self.esl_used = False
        self.created = time.monotonic()
        self.last_command = 0.0
        self.state = "closed"
        self.attempts = 0  # consecutive failed connection attempts
        self.last_error = ""
        self.connected_since: float | None = None  # epoch seconds
        self.closed = False
        self._subs: dict[str, _Sub] = {}
        self._wanted: dict[str, int] = {}  # lower-case name -> names with refs > 0
        self._route: dict[str, bool] = {}  # FreeSWITCH's Event-Name -> deliver?
        self._conn: EslConnection | None = None
        self._supervisor: gevent.Greenlet | None = None
        self._wake = gevent.event.Event()
        self._stop = gevent.event.Event()
        self._up = gevent.event.Event()  # connected
        self._attempted = gevent.event.Event()  # the current connection attempt is over
        self._holding: list | None = None
        # load figures from the last HEARTBEAT
        self.idle_cpu: float | None = None
        self.session_count: int | None = None
        self.max_sessions: int | None = None
        self._heartbeat: dict | None = None
        self._heartbeat_at = 0.0
        # per-socket counters (status())
        self.events_received = 0
        self.events_relayed = 0
        self.events_dropped = 0
        self.events_queue_dropped = 0
        self.reconnects = 0
        self.commands = 0
        self.command_timeouts = 0
        counters = manager._counters
        self._c_received = counters.events_received
        self._c_relayed = counters.events_relayed
        self._c_dropped = counters.events_dropped

    def __repr__(self) -> str:
        return f"EslSocket({self.name!r}, state={self.state!r}, refs={self.refs})"

    # -- credentials (FSS.md §2.3) ---------------------------------------------

    def update_credentials(self, username: str | None, password: str | None, from_db: bool = False) -> None:
        """A later URL (or DB row) naming this socket: the username is replaced
        or cleared, the password replaced only when given. URLs no longer
        change a DB-provisioned socket; a DB row marks it so. Used from the
        next connection attempt on."""
        if self.db_provisioned and not from_db:
            return
        self.username = username or None
        if password:
            self._password = password
        if from_db:
            self.db_provisioned = True

    # -- references and lifetime -----------------------------------------------

    def ref(self) -> None:
        """One more scripting entry uses this socket: keep it connected."""
        if self.closed:
            self._manager._revive(self)
        self.refs += 1
        self._start()

    def unref(self) -> None:
        """One entry less; the last one closes the socket at once (no
        `nixevent`) unless `command()` used it."""
        if self.refs <= 0:
            return
        self.refs -= 1
        if self.refs == 0 and not self.esl_used:
            self._manager._close_socket(self, "no longer referenced")

    # -- subscriptions ----------------------------------------------------------

    def subscribe(self, name: str) -> None:
        """One more reference on event `name` (sent as given)."""
        event_command(name)  # validates: one line, not empty
        sub = self._subs.get(name)
        if sub is None:
            sub = self._subs[name] = _Sub(name)
        sub.refs += 1
        if sub.refs == 1:
            key = name.lower()
            self._wanted[key] = self._wanted.get(key, 0) + 1
            self._route.clear()
            self._wake.set()

    def unsubscribe(self, name: str) -> bool:
        """One reference less on `name`; False if it had none."""
        sub = self._subs.get(name)
        if sub is None or sub.refs <= 0:
            return False
        sub.refs -= 1
        if sub.refs == 0:
            key = name.lower()
            left = self._wanted.get(key, 1) - 1
            if left:
                self._wanted[key] = left
            else:
                self._wanted.pop(key, None)
            self._route.clear()
            self._wake.set()
        return True

    def subscribed(self) -> list[str]:
        """Names with a reference, first-subscribed order."""
        return [s.name for s in self._subs.values() if s.refs > 0]

    def event_refs(self, name: str) -> int:
        sub = self._subs.get(name)
        return sub.refs if sub else 0

    # -- commands ----------------------------------------------------------------

    def command(self, text: str, timeout: float | None = None) -> EslReply:
        """Run one ESL command (text without its blank line) and return its
        reply. A socket still making its first connection is waited for up to
        `esl_connect_timeout`. Raises EslNotConnected or EslTimeout; ValueError
        for a text that is empty or holds an empty line (a second command)."""
        if not text.strip() or "\n\n" in text or "\n\r\n" in text:
            raise ValueError("an ESL command must be one non-empty command without an empty line")
        manager = self._manager
        self.commands += 1
        manager._counters.commands.value += 1
        self.esl_used = True
        self.last_command = time.monotonic()
        if self.closed:
            raise EslNotConnected(f"{self.name} is closed")
        self._start()
        conn = self._conn
        if conn is None or not conn.connected:
            if self.state in ("connecting", "authenticating"):
                self._attempted.wait(manager.connect_timeout)
            conn = self._conn
            if conn is None or not conn.connected:
                detail = f": {self.last_error}" if self.last_error else ""
                raise EslNotConnected(f"{self.name} is not connected{detail}")
        if timeout is None:
            timeout = manager.cmd_timeout
        try:
            return conn.command(text, timeout)
        except EslTimeout:
            self.command_timeouts += 1
            manager._counters.command_timeouts.value += 1
            raise
        finally:
            self.last_command = time.monotonic()

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.connected

    # -- status --------------------------------------------------------------------

    def status(self) -> dict:
        """One `fs_status` entry (FSS.md §9); never any credential."""
        active = []
        pending = []
        for sub in self._subs.values():
            if sub.refs > 0:
                (active if sub.state == _Sub.ACTIVE else pending).append(sub.name)
        since = None
        if self.connected_since is not None:
            since = datetime.datetime.fromtimestamp(self.connected_since, datetime.timezone.utc) \
                .isoformat(timespec="seconds").replace("+00:00", "Z")
        heartbeat = None
        if self._heartbeat is not None:
            heartbeat = dict(self._heartbeat)
            heartbeat["age_s"] = int(time.monotonic() - self._heartbeat_at)
        return {
            "if": self.name,
            "state": self.state,
            "refs": self.refs,
            "events": active,
            "pending": pending,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "connected_since": since,
            "heartbeat": heartbeat,
            "esl_used": self.esl_used,
            "events_received": self.events_received,
            "events_relayed": self.events_relayed,
            "events_dropped": self.events_dropped,
            "events_queue_dropped": self.events_queue_dropped,
            "reconnects": self.reconnects,
            "commands": self.commands,
            "command_timeouts": self.command_timeouts,
        }

    # -- supervisor --------------------------------------------------------------

    def _start(self) -> None:
        if self._supervisor is None and not self.closed and not self._manager._stopped:
            self.state = "connecting"
            self._supervisor = gevent.spawn(self._run, self._stop)

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.state = "closed"
        self._stop.set()
        supervisor, self._supervisor = self._supervisor, None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(reason)
            self._count_late(conn)
        self._up.clear()
        self._attempted.set()
        self.connected_since = None
        self._reset_wire_state()
        held, self._holding = self._holding, None
        if held:
            self._drop(len(held))
        if supervisor is not None and supervisor is not gevent.getcurrent():
            supervisor.kill(block=False)

    def _run(self, stop: gevent.event.Event) -> None:
        """Connect, serve, reconnect, until `stop` is set (by _close)."""
        manager = self._manager
        counters = manager._counters
        while not stop.is_set():
            conn = EslConnection(
                self.host, self.port, connect_timeout=manager.connect_timeout, on_frame=self._on_frame,
                max_body=manager.max_body, liveness_timeout=manager.liveness_timeout,
                idle_probe=manager.idle_probe, busy_timeout=manager.busy_timeout, label=self.name)
            self.state = "connecting"
            self._attempted.clear()
            self._holding = []
            try:
                conn.open(self.username, self._password, on_authenticating=self._authenticating)
            except Exception as exc:  # EslConnectError, or a bug: never lose the socket
                if stop.is_set():
                    return
                if not isinstance(exc, EslConnectError):
                    log.error("ESL %s: connection attempt failed: %r", self.name, exc)
                    exc = EslConnectError(f"connection attempt failed: {type(exc).__name__}")
                self._holding = None
                self.attempts += 1
                self.last_error = str(exc)
                counters.connect_failures.value += 1
                self._attempted.set()
                if self.attempts == 1 or self.attempts % 20 == 0 or isinstance(exc, EslAuthError):
                    log.warning("ESL %s: %s (attempt %d)", self.name, exc, self.attempts)
                if self.refs == 0 and (not self.esl_used or self.attempts >= ESL_ONLY_MAX_ATTEMPTS):
                    manager._close_socket(self, "gave up connecting")
                    return
                self.state = "backoff"
                stop.wait(backoff_gap(self.attempts))
                continue
            if stop.is_set():
                conn.close("socket closed")
                return
            self._conn = conn
            self.attempts = 0
            self.last_error = ""
            self.connected_since = time.time()
            self.state = "connected"
            log.info("ESL %s: connected", self.name)
            self._up.set()
            self._attempted.set()
            self._serve(conn, stop)
            if stop.is_set():
                return  # _close() cleaned up
            self._up.clear()
            self._conn = None
            self.connected_since = None
            self._reset_wire_state()
            held, self._holding = self._holding, None
            if held:
                self._drop(len(held))
            self._count_late(conn)
            self.reconnects += 1
            counters.reconnects.value += 1
            self.last_error = conn.lost_reason or "connection lost"
            log.warning("ESL %s: %s; reconnecting", self.name, self.last_error)

    def _count_late(self, conn: EslConnection) -> None:
        if conn.late_replies:
            self._manager._counters.late_replies.value += conn.late_replies
            conn.late_replies = 0

    def _authenticating(self) -> None:
        self.state = "authenticating"

    def _serve(self, conn: EslConnection, stop: gevent.event.Event) -> None:
        """Resubscribe everything, release held events, then keep the wire
        subscriptions in step with the reference sums until the connection ends."""
        self._sync(conn)
        if not conn.connected or stop.is_set():
            return
        held, self._holding = self._holding, None
        deliver = self._deliver
        for body in held:
            deliver(body)
        while conn.connected and not stop.is_set():
            timeout = self._next_retry()
            gevent.wait([self._wake, conn.closed, stop], count=1, timeout=timeout)
            self._wake.clear()
            if conn.connected and not stop.is_set():
                self._sync(conn)

    def _next_retry(self) -> float | None:
        due = [s.retry_at for s in self._subs.values() if s.refs > 0 and s.state == _Sub.PENDING]
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def _sync(self, conn: EslConnection) -> None:
        """Send what the reference sums ask for, pipelined, one command per
        event in first-subscribed order; repeat until nothing changes."""
        manager = self._manager
        while conn.connected:
            now = time.monotonic()
            batch = []
            for sub in list(self._subs.values()):
                state = sub.state
                if sub.refs > 0:
                    if state == _Sub.PENDING and sub.retry_at <= now:
                        sub.state = _Sub.SENDING
                        batch.append((sub, event_command(sub.name)))
                elif state == _Sub.PENDING:
                    del self._subs[sub.name]  # never accepted: cancelled, nothing to undo
                elif state == _Sub.ACTIVE:
                    if self._still_active_as_other_case(sub):
                        del self._subs[sub.name]  # FreeSWITCH matches names case-insensitively
                    else:
                        sub.state = _Sub.NIXING
                        batch.append((sub, nixevent_command(sub.name)))
            if not batch:
                return
            try:
                waiters = [(sub, conn.send(text, user=False, timeout=manager.cmd_timeout)) for sub, text in batch]
            except (EslNotConnected, EslTimeout) as exc:
                # whatever was half done is redone on the next connection
                conn.close(f"could not send a subscription command: {exc}")
                return
            for sub, waiter in waiters:
                try:
                    reply = conn.wait(waiter, manager.cmd_timeout)
                except EslTimeout:
                    conn.close(f"no reply to a subscription command within {manager.cmd_timeout:g} s")
                    return
                except EslNotConnected:
                    return
                self._on_sub_reply(sub, reply.reply_text or "")

    def _still_active_as_other_case(self, sub: _Sub) -> bool:
        key = sub.name.lower()
        return any(o is not sub and o.refs > 0 and o.state in (_Sub.ACTIVE, _Sub.SENDING)
                   and o.name.lower() == key for o in self._subs.values())

    def _on_sub_reply(self, sub: _Sub, text: str) -> None:
        if sub.state == _Sub.SENDING:
            if text.startswith("-ERR"):
                sub.state = _Sub.PENDING
                sub.rejections += 1
                gap = rejected_retry_gap(sub.rejections)
                sub.retry_at = time.monotonic() + gap
                self._manager._counters.subscribe_rejected.value += 1
                self.last_error = f"FreeSWITCH refused event {sub.name!r}: {text}"
                if sub.rejections == 1 or gap != rejected_retry_gap(sub.rejections - 1):
                    log.warning("ESL %s: FreeSWITCH refused 'event json %s' (%s); retrying every %g s",
                                self.name, sub.name, text, gap)
                if sub.refs == 0:
                    self._subs.pop(sub.name, None)
            else:
                if not text.startswith("+OK"):
                    log.info("ESL %s: unexpected reply to 'event json %s': %r", self.name, sub.name, text)
                sub.state = _Sub.ACTIVE
                if sub.rejections:
                    log.info("ESL %s: event %s accepted after %d refusals", self.name, sub.name, sub.rejections)
                sub.rejections = 0
        elif sub.state == _Sub.NIXING:
            if sub.refs == 0:
                if self._subs.get(sub.name) is sub:
                    del self._subs[sub.name]
            else:
                sub.state = _Sub.PENDING  # wanted again while the nixevent was on its way
                sub.retry_at = 0.0

    def _reset_wire_state(self) -> None:
        """The connection is gone: nothing is subscribed on the wire any more."""
        for sub in list(self._subs.values()):
            if sub.refs == 0:
                del self._subs[sub.name]
            else:
                sub.state = _Sub.PENDING
                sub.retry_at = 0.0

    # -- incoming events (reader greenlet) -------------------------------------------

    def _on_frame(self, frame) -> None:
        """Every frame that is not a reply (reader greenlet, hot path)."""
        self.events_received += 1
        self._c_received.value += 1
        body = frame.body
        if frame.content_type != CT_EVENT_JSON or body is None:
            self._drop()
            return
        if self._holding is not None:
            if len(self._holding) < HOLD_LIMIT:
                self._holding.append(body)
            else:
                self._drop()
            return
        self._deliver(body)

    def _deliver(self, body: bytes) -> None:
        name = event_name(body)
        route = self._route.get(name)
        if route is None:
            if name is None:
                self._drop()
                self._manager._log_bad_event(self, body)
                return
            route = self._route[name] = name.lower() in self._wanted
        if name == "HEARTBEAT":
            self._on_heartbeat(body)
        if not route:
            self._drop()
            return
        self.events_relayed += 1
        self._c_relayed.value += 1
        sink = self._manager.event_sink
        if sink is not None:
            try:
                sink(self, name, body)
            except Exception:
                self._manager._sink_failed(self, name)
        consumers = self._manager._consumers
        if consumers:
            for consumer in consumers:
                consumer.offer(self, name, body)

    def _drop(self, n: int = 1) -> None:
        self.events_dropped += n
        self._c_dropped.value += n

    def _on_heartbeat(self, body: bytes) -> None:
        try:
            data = orjson.loads(body)
            idle = data["Idle-CPU"]
            count = data["Session-Count"]
            limit = data["Max-Sessions"]
            self.idle_cpu = float(idle)
            self.session_count = int(count)
            self.max_sessions = int(limit)
        except (ValueError, KeyError, TypeError):
            log.warning("ESL %s: HEARTBEAT without usable Idle-CPU/Session-Count/Max-Sessions", self.name)
            return
        self._heartbeat = {"Idle-CPU": idle, "Session-Count": count, "Max-Sessions": limit}
        self._heartbeat_at = time.monotonic()


class EslConsumer:
    """A bounded queue of relayed events drained by its own greenlet into
    `handler(socket, name, body)`. When the queue is full the event is
    dropped for this consumer only and counted here, on the socket and in
    `freeswitch:events_queue_dropped`."""

    def __init__(self, manager: "EslManager", name: str, handler, maxsize: int):
        self._manager = manager
        self.name = name
        self.handler = handler
        self.maxsize = maxsize
        self.queue: collections.deque = collections.deque()
        self.delivered = 0
        self.dropped = 0
        self.dropped_by_socket: dict[str, int] = {}
        self._ready = gevent.event.Event()
        self._greenlet = gevent.spawn(self._drain)

    def offer(self, sock: EslSocket, name: str, body: bytes) -> bool:
        queue = self.queue
        if len(queue) >= self.maxsize:
            self.dropped += 1
            self.dropped_by_socket[sock.name] = self.dropped_by_socket.get(sock.name, 0) + 1
            sock.events_queue_dropped += 1
            self._manager._counters.events_queue_dropped.value += 1
            return False
        queue.append((sock, name, body))
        if not self._ready.is_set():
            self._ready.set()
        return True

    def _drain(self) -> None:
        queue = self.queue
        while True:
            self._ready.wait()
            self._ready.clear()
            while queue:
                sock, name, body = queue.popleft()
                try:
                    self.handler(sock, name, body)
                except Exception:
                    log.exception("ESL consumer %s failed on %s from %s", self.name, name, sock.name)
                self.delivered += 1

    def status(self) -> dict:
        return {"name": self.name, "queued": len(self.queue), "maxsize": self.maxsize,
                "delivered": self.delivered, "dropped": self.dropped,
                "dropped_by_socket": dict(self.dropped_by_socket)}

    def close(self) -> None:
        self._greenlet.kill(block=False)


class EslManager:
    """Every ESL socket of the process, by (host string, port)."""

    def __init__(self, settings, stats: Stats, *, liveness_timeout: float = 30.0, idle_probe: float = 10.0,
                 busy_timeout: float = 300.0, max_body: int = DEFAULT_MAX_BODY):
        self.settings = settings
        self.stats = stats
        self.connect_timeout = settings.esl_connect_timeout / 1000.0
        self.cmd_timeout = settings.esl_cmd_timeout / 1000.0
        self.no_esl_timeout = float(settings.fs_no_esl_timeout)
        self.liveness_timeout = liveness_timeout
        self.idle_probe = idle_probe
        self.busy_timeout = busy_timeout
        self.max_body = max_body
        self.event_sink = None
        self._sockets: dict[tuple[str, int], EslSocket] = {}
        self._consumers: list[EslConsumer] = []
        self._counters = _Counters(stats)
        self._reaper: gevent.Greenlet | None = None
        self._stopped = False
        self._bad_logged = -1e9
        self._sink_logged = -1e9
        stats.gauge(STATS_GROUP, "sockets", lambda: len(self._sockets))
        stats.gauge(STATS_GROUP, "connected_sockets",
                    lambda: sum(1 for s in self._sockets.values() if s.connected))

    # -- sockets ------------------------------------------------------------------

    def find(self, host: str, port: int | None = None) -> EslSocket | None:
        return self._sockets.get((host, port or DEFAULT_PORT))

    def get(self, host: str, port: int | None = None, username: str | None = None,
            password: str | None = None) -> EslSocket:
        """The socket for (host, port), created if needed — which takes a
        password (EslNoPassword). An existing socket's credentials are not
        touched (see EslSocket.update_credentials)."""
        port = port or DEFAULT_PORT
        key = (host, port)
        sock = self._sockets.get(key)
        if sock is not None:
            return sock
        if not password:
            raise EslNoPassword(f"no password to create the ESL socket {host}:{port}")
        if not host:
            raise ValueError("empty host")
        sock = self._sockets[key] = EslSocket(self, host, port, username, password)
        return sock

    def sockets(self) -> list[EslSocket]:
        return list(self._sockets.values())

    def _revive(self, sock: EslSocket) -> None:
        key = (sock.host, sock.port)
        if self._sockets.get(key, sock) is not sock:
            raise EslError(f"socket {sock.name} was closed and replaced")
        if self._stopped:
            raise EslError("the ESL manager is stopped")
        sock.closed = False
        sock._stop = gevent.event.Event()
        sock.state = "closed"
        sock.created = time.monotonic()
        self._sockets[key] = sock

    def _close_socket(self, sock: EslSocket, reason: str) -> None:
        key = (sock.host, sock.port)
        if self._sockets.get(key) is sock:
            del self._sockets[key]
        if not sock.closed:
            log.info("ESL %s: closing (%s)", sock.name, reason)
        sock._close(reason)

    # -- consumers ---------------------------------------------------------------

    def add_consumer(self, name: str, handler, maxsize: int = 10_000) -> EslConsumer:
        """Deliver every relayed event to `handler(socket, name, body)` from
        its own greenlet, through a queue of at most `maxsize` events."""
        consumer = EslConsumer(self, name, handler, maxsize)
        self._consumers.append(consumer)
        return consumer

    def remove_consumer(self, consumer: EslConsumer) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        consumer.close()

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        self._stopped = False
        if self._reaper is None:
            self._reaper = gevent.spawn(self._reap_loop)

    def stop(self) -> None:
        self._stopped = True
        if self._reaper is not None:
            self._reaper.kill(block=False)
            self._reaper = None
        for sock in list(self._sockets.values()):
            self._close_socket(sock, "shutting down")
        for consumer in self._consumers:
            consumer.close()
        self._consumers = []

    def _reap_loop(self) -> None:
        step = max(0.01, min(TICK, self.idle_probe / 2, self.liveness_timeout / 4))
        last_reap = time.monotonic()
        while True:
            gevent.sleep(step)
            now = time.monotonic()
            for sock in list(self._sockets.values()):
                conn = sock._conn
                if conn is not None:
                    conn.check_liveness(now)
            if now - last_reap >= TICK:
                last_reap = now
                self.reap()

    def reap(self) -> None:
        """Close sockets nobody needs any more (FSS.md §7.3)."""
        now = time.monotonic()
        for sock in list(self._sockets.values()):
            if sock.refs > 0:
                continue
            if not sock.esl_used:
                if now - sock.created >= UNUSED_GRACE:
                    self._close_socket(sock, "not used")
            elif now - sock.last_command >= self.no_esl_timeout:
                self._close_socket(sock, f"no ESL command for {self.no_esl_timeout:g} s")
            elif not sock.connected and sock.attempts >= ESL_ONLY_MAX_ATTEMPTS:
                self._close_socket(sock, f"{sock.attempts} failed connection attempts")

    def _sink_failed(self, sock: EslSocket, name: str) -> None:
        """A bug in the event sink: count it, log it at most every 10 s."""
        self._counters.sink_errors.value += 1
        now = time.monotonic()
        if now - self._sink_logged >= 10.0:
            self._sink_logged = now
            log.exception("ESL %s: the event sink failed on %s (%d failures so far)",
                          sock.name, name, self._counters.sink_errors.value)

    def _log_bad_event(self, sock: EslSocket, body: bytes) -> None:
        now = time.monotonic()
        if now - self._bad_logged >= 10.0:
            self._bad_logged = now
            log.warning("ESL %s: dropped an event without a usable Event-Name (%d bytes: %r)",
                        sock.name, len(body), body[:80])

"""One client connection of the simulated Event Socket: its session state
(auth, subscriptions, format, filters, log level), its outbound queue of
frames with FreeSWITCH's slow-consumer rule (docs/protocols/esl.md §8) and the writer
greenlet that drains that queue in large batches, and the reader greenlet
that feeds what the client sends to ``session.handle``.

Replies and events share one ordered queue, so a frame is never interleaved
with another and replies keep command order; only events count against the
queue size (100 000 by default) and can be lost.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event as GEvent
from gevent import socket  # cooperative even without monkey-patching

from .commands import CommandParser, ParseError
from .notices import BYE, NOTICE_LOST, NOTICE_LOST_LOG, notice_frame
from .session import handle, reply_frame

if TYPE_CHECKING:
    from .events import Event
    from .server import FsSimulator
    from .settings import SimUser

__all__ = ["SimClient"]

BATCH_BYTES = 256 * 1024


class _Record:
    """Bytes of one direction, kept up to a limit (the total is always counted)."""

    __slots__ = ("data", "total", "limit")

    def __init__(self, limit: int):
        self.data = bytearray()
        self.total = 0
        self.limit = limit

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]


class SimClient:
    """A connected ESL client as the simulator sees it.

    Public attributes: ``number`` (1-based accept order), ``peer``
    ("host:port"), ``commands`` (each complete command as received, CRs and
    the terminating blank line removed, e.g. ``"bgapi status\nJob-UUID: x"``),
    ``authed``, ``user`` (SimUser after userauth), ``alive``, ``format``
    ("plain" until an ``event`` command sets it), ``events`` (subscribed
    names; "ALL" included when subscribed to everything), ``subclasses``,
    ``filters``, ``log_level``, ``rx``/``tx`` (bytes received/sent, up to
    the box's ``record_limit``; ``rx_total``/``tx_total`` count them all),
    ``sent_events``, ``lost_total``, ``first_seq``/``last_seq`` (Event-Sequence
    range queued to it), ``closed_reason``.
    """

    def __init__(self, box: FsSimulator, sock: socket.socket, peer: str, number: int):
        self.box = box
        self.sock = sock
        self.peer = peer  # "host:port"
        self.number = number  # 1-based accept order
        self.parser = CommandParser()
        self.commands: list[str] = []
        self.authed = False
        self.user: SimUser | None = None  # after userauth
        self.alive = True
        self.format = "plain"
        self.events_on = False  # LFLAG_EVENTS
        self.all_events = False
        self.event_list: dict[str, None] = {}  # subscribed names, in order
        self.subclasses: dict[str, None] = {}
        self.filters: list[tuple[str, str]] = []
        self.log_level: int | None = None
        self.myevents: str | None = None  # channel uuid bound by myevents
        self.myevents_on = False
        self.closed_reason: str | None = None
        self._rx = _Record(box.settings.record_limit)
        self._tx = _Record(box.settings.record_limit)
        # outbound queue
        self._queue: deque[tuple[bytes, int]] = deque()
        self.queued_events = 0
        self.lost = 0  # consecutive losses
        self.lost_total = 0
        self.sent_events = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.queued_logs = 0  # log lines have their own queue limit and loss rule
        self.log_lost = 0
        self.log_lost_total = 0
        self._held: list[tuple[bytes, int]] | None = None  # events arriving while a sync api runs
        self.unstalled = GEvent()  # cleared while this connection is stalled
        self.unstalled.set()
        self._wake = GEvent()
        self._room = GEvent()
        self._room.set()
        self._closing = False
        self._writer: gevent.Greenlet | None = None
        self._reader: gevent.Greenlet | None = None

    # -- life cycle ----------------------------------------------------------
    def start(self, greeting: bytes) -> None:
        """Greet the client, then read its commands and write the queue."""
        self.send_frame(greeting)
        self._writer = gevent.spawn(self.run_writer)
        self._reader = gevent.spawn(self.run_reader)

    def reject(self, notice: bytes, reason: str) -> None:
        """Send ``notice`` instead of the greeting and close (nothing is read)."""
        self.close_with(notice, reason)
        self._writer = gevent.spawn(self.run_writer)

    @property
    def closing(self) -> bool:
        """True once the connection closes after what is queued."""
        return self._closing

    # -- recording ---------------------------------------------------------
    @property
    def rx(self) -> bytes:
        return bytes(self._rx.data)

    @property
    def tx(self) -> bytes:
        return bytes(self._tx.data)

    @property
    def rx_total(self) -> int:
        return self._rx.total

    @property
    def tx_total(self) -> int:
        return self._tx.total

    @property
    def events(self) -> set[str]:
        names = set(self.event_list)
        if self.all_events:
            names.add("ALL")
        return names

    # -- subscriptions -----------------------------------------------------
    def wants(self, event: Event) -> bool:
        """FreeSWITCH's event_handler delivery rule plus the filter allow-list."""
        if not self.events_on or not self.authed:
            return False
        if self.myevents is not None:
            # recorded: a myevents connection gets no CHANNEL_CALLSTATE
            return event.name != "CHANNEL_CALLSTATE" and event.get("Unique-ID") == self.myevents
        if self.all_events:
            send = True
        elif event.name in self.event_list:
            send = event.name != "CUSTOM" or not event.subclass or event.subclass in self.subclasses
        else:
            return False
        if send and self.filters:
            send = self._filter(event)
        return send

    def _filter(self, event: Event) -> bool:
        send = False
        for name, value in self.filters:
            hval = event.get(name)
            if hval is None:
                continue
            comp = value
            pos = True
            while comp and comp[0] in "+- ":
                if comp[0] == "+":
                    pos = True
                elif comp[0] == "-":
                    pos = False
                comp = comp[1:]
            if send and pos:
                continue
            if value.startswith("/"):
                pattern = comp[1:-1] if comp.endswith("/") and len(comp) > 1 else comp[1:]
                try:
                    cmp = re.search(pattern, hval) is not None
                except re.error:
                    cmp = False
            else:
                cmp = hval.lower() == comp.lower()
            if cmp:
                if pos:
                    send = True
                else:
                    return False
        return send

    # -- queue -------------------------------------------------------------
    def send_frame(self, data: bytes) -> None:
        """A reply or notice: always queued, never lost."""
        if self._closing or not self.alive:
            return
        self._queue.append((data, 0))
        self._wake.set()

    def enqueue_event(self, data: bytes, count: int = 1, seq: int | None = None, seq_last: int | None = None) -> bool:
        """Queue an event frame (or a batch of ``count`` frames); False if lost."""
        if self._closing or not self.alive:
            return False
        box = self.box
        limits = box.settings
        if self.queued_events + count > limits.queue_size:
            self.lost += count
            self.lost_total += count
            box.lost_events += count
            if self.lost > limits.max_lost:
                self.kill_lost(NOTICE_LOST, "lost events")
            return False
        if self.lost:
            self.lost = 0
        self.queued_events += count
        if self.queued_events >= limits.queue_size:
            self._room.clear()
        if seq is not None:
            if self.first_seq is None:
                self.first_seq = seq
            self.last_seq = seq if seq_last is None else seq_last
        item = (data, count)
        if self._held is not None:
            self._held.append(item)
        else:
            self._queue.append(item)
            self._wake.set()
        return True

    def enqueue_log(self, data: bytes) -> bool:
        """Queue a log/data frame; the slow-consumer rule applies to log
        lines separately (docs/protocols/esl.md §8: same 100 000 / 500 figures)."""
        if self._closing or not self.alive:
            return False
        box = self.box
        if self.queued_logs >= box.settings.queue_size:
            self.log_lost += 1
            self.log_lost_total += 1
            box.lost_log_lines += 1
            if self.log_lost > box.settings.max_lost:
                self.kill_lost(NOTICE_LOST_LOG, "lost log lines")
            return False
        self.log_lost = 0
        self.queued_logs += 1
        self._queue.append((data, -1))
        self._wake.set()
        return True

    def _keep_queued(self, keep: Callable[[int], bool]) -> None:
        """Drop the queued frames whose count (0 reply, >0 events, -1 log line) fails ``keep``."""
        kept = [item for item in self._queue if keep(item[1])]
        self._queue.clear()
        self._queue.extend(kept)

    def drop_queued_logs(self) -> None:
        """``nolog``: log lines not yet written are discarded."""
        self._keep_queued(lambda count: count >= 0)
        self.queued_logs = 0

    def drop_queued_events(self) -> None:
        """``noevents``: events not yet written are discarded, the rest kept."""
        self._keep_queued(lambda count: count <= 0)
        if self._held:
            self._held.clear()
        self.queued_events = 0
        self._room.set()

    def hold_events(self) -> None:
        """While a synchronous api runs, its connection gets no events."""
        self._held = []

    def release_events(self) -> None:
        held, self._held = self._held, None
        if held:
            self._queue.extend(held)
            self._wake.set()

    def wait_below(self, limit: int) -> bool:
        """Block until at most ``limit`` events are queued (burst back-pressure)."""
        while self.alive and not self._closing and self.queued_events > limit:
            self._room.clear()
            self._room.wait()
        return self.alive and not self._closing

    def kill_lost(self, notice: str, reason: str) -> None:
        """The slow-consumer kill: drop what is queued, notice, close."""
        self.box.log("killing listener %s because of too many %s. Lost [%d] Queue size[%d/%d]"
                     % (self.peer, reason, max(self.lost, self.log_lost),
                        max(self.queued_events, self.queued_logs), self.box.settings.queue_size))
        self._queue.clear()
        if self._held:
            self._held.clear()
        self.queued_events = 0
        self.queued_logs = 0
        self.close_with(notice_frame(notice), reason)

    def close_with(self, last: bytes | None, reason: str) -> None:
        """Send ``last`` (a notice) after what is queued, then close."""
        if self._closing or not self.alive:
            return
        if last:
            self._queue.append((last, 0))
        self._closing = True
        self.closed_reason = reason
        self._wake.set()

    def abort(self, reason: str = "dropped") -> None:
        """Cut the connection now, nothing more sent."""
        if not self.alive:
            return
        self.closed_reason = self.closed_reason or reason
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        was_alive = self.alive
        self.alive = False
        self._queue.clear()
        self.queued_events = 0
        self._room.set()
        self._wake.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        if was_alive:
            self.box.client_closed(self)
            if self._reader is not None and self._reader is not gevent.getcurrent():
                self._reader.kill(block=False)

    # -- reader --------------------------------------------------------------
    def run_reader(self) -> None:
        """Read commands until the client goes (unauthenticated, only for
        the box's ``auth_timeout``), each run by ``session.handle`` after the
        box's stall and delay faults."""
        sock = self.sock
        box = self.box
        auth_timeout = box.settings.auth_timeout
        deadline = time.monotonic() + auth_timeout if auth_timeout else None
        try:
            while self.alive and not self._closing:
                box.wait_unstalled(self)
                if deadline is not None and not self.authed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise socket.timeout()
                    sock.settimeout(left)
                else:
                    sock.settimeout(None)
                data = sock.recv(65536)
                if not data:
                    self.close_with(None, "eof")
                    return
                self._rx.add(data)
                if not self._run_commands(data):
                    return
        except socket.timeout:
            self.close_with(BYE, "auth timeout")
        except OSError:
            self.abort("read error")

    def _run_commands(self, data: bytes) -> bool:
        """Parse ``data`` and run each complete command; False once the
        connection is closing."""
        box = self.box
        for item in self.parser.feed(data):
            if isinstance(item, ParseError):
                if item.kind == "nul":
                    self.send_frame(reply_frame("-ERR command parse error."))
                self.close_with(BYE, "parse error (%s)" % item.kind)
                return False
            self.commands.append(item.text)
            box.wait_unstalled(self)
            if box.delay_ms:
                gevent.sleep(box.delay_ms / 1000.0)
            handle(self, item)
            if self._closing or not self.alive:
                return False
        return True

    # -- writer --------------------------------------------------------------
    def run_writer(self) -> None:
        queue = self._queue
        sock = self.sock
        box = self.box
        try:
            while self.alive:
                if not queue:
                    if self._closing:
                        break
                    self._wake.clear()
                    self._wake.wait()
                    continue
                box.wait_unstalled(self)
                batch = []
                size = 0
                events = 0
                logs = 0
                while queue and size < BATCH_BYTES:
                    data, count = queue.popleft()
                    batch.append(data)
                    size += len(data)
                    if count > 0:
                        events += count
                    elif count < 0:
                        logs += 1
                if events:  # out of the queue, on their way to the socket
                    self.queued_events -= events
                    self._room.set()
                self.queued_logs -= logs
                chunk = batch[0] if len(batch) == 1 else b"".join(batch)
                sock.sendall(chunk)
                self._tx.add(chunk)
                self.sent_events += events
        except (OSError, gevent.GreenletExit):
            pass
        finally:
            self._shutdown_socket()

    def state(self) -> dict:
        return {
            "conn": self.number,
            "peer": self.peer,
            "authed": self.authed,
            "user": self.user.name if self.user else None,
            "format": self.format,
            "events": (["ALL"] if self.all_events else []) + list(self.event_list),
            "subclasses": list(self.subclasses),
            "filters": [list(f) for f in self.filters],
            "alive": self.alive,
            "commands": list(self.commands),
            "sent_events": self.sent_events,
            "queued_events": self.queued_events,
            "lost_events": self.lost_total,
            "lost_log_lines": self.log_lost_total,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "rx_bytes": self.rx_total,
            "tx_bytes": self.tx_total,
            "closed_reason": self.closed_reason,
        }

"""The `freeswitch` module: every ESL socket of the process by (host string,
port), their references and lifetime, the limits, and the consumers of
relayed events (docs/protocols/esl.md §10, docs/protocols/scripting.md §1, §2.2, §2.3, §7.3, §9). One socket's
life is `socket.py`; its events' bookkeeping `subscriptions.py`.

* Sockets are identified by the exact host string and port; a password is
  needed only to create one. At most `esl_max_sockets` may be created on
  demand (`get(..., limited=True)`, what MI calls use): over it
  `EslTooManySockets`, and nothing is created.
* Lifetime: the last `unref()` closes a socket at once (no `nixevent`)
  unless `command()` used it; such an ESL-used socket lives until
  `fs_no_esl_timeout` seconds pass without a command, or 100 consecutive
  failed connection attempts. A socket nobody references or uses is reaped.
* Relayed events go to `event_sink(socket, name, body)` in the reader
  greenlet (it must not block) and to every consumer added with
  `add_consumer()` through a bounded queue. A failing sink is counted and
  logged at most every 10 s, like events without a usable `Event-Name`.
* One manager greenlet ticks: it reaps sockets once a second and asks every
  socket to check its connection's liveness (idle probe, silence bound)
  often enough for the configured bounds.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import TYPE_CHECKING, Callable

import gevent
import gevent.event

from .. import heap
from ..stats import Stats
from .connection import EslError
from .protocol import printable
from .socket import ESL_ONLY_MAX_ATTEMPTS, EslCounters, EslSocket, SocketSettings, backoff_gap
from .subscriptions import rejected_retry_gap
from .throttle import LogThrottle

if TYPE_CHECKING:
    from ..config import FreeswitchSettings

# what a consumer is handed: (socket, event name, event body)
ConsumerHandler = Callable[[EslSocket, str, bytes], None]

__all__ = [
    "EslConsumer",
    "EslManager",
    "EslNoPassword",
    "EslSocket",
    "EslTooManySockets",
    "backoff_gap",
    "rejected_retry_gap",
]

log = logging.getLogger("opensips_fs.esl")

DEFAULT_PORT = 8021
STATS_GROUP = "freeswitch"
TICK = 1.0
UNUSED_GRACE = 2.0  # a socket from get() that nobody refs or uses within this is reaped
TRIM_AFTER = 100  # closed sockets after which freed heap is handed back to the OS


class EslNoPassword(EslError):
    """A socket cannot be created without a password."""


class EslTooManySockets(EslError):
    """Creating one more socket would pass `esl_max_sockets`."""


class EslConsumer:
    """A bounded queue of relayed events drained by its own greenlet into
    `handler(socket, name, body)`. When the queue is full the event is
    dropped for this consumer only and counted here, on the socket and in
    `freeswitch:events_queue_dropped`. A socket's own count goes with the
    socket (`forget()`); the consumer's total stays."""

    def __init__(self, name: str, handler: ConsumerHandler, maxsize: int):
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
            sock.count_queue_drop()
            return False
        queue.append((sock, name, body))
        if not self._ready.is_set():
            self._ready.set()
        return True

    def forget(self, sock: EslSocket) -> None:
        """`sock` is gone: drop its entry in `dropped_by_socket`."""
        self.dropped_by_socket.pop(sock.name, None)

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

    def __init__(self, settings: FreeswitchSettings, stats: Stats, *, liveness_timeout: float = 30.0,
                 idle_probe: float = 10.0, busy_timeout: float = 300.0, max_body: int | None = None,
                 stable_after: float = 5.0, max_gap: float = 60.0, failure_reminder: float = 300.0):
        self.stats = stats
        self.no_esl_timeout = float(settings.fs_no_esl_timeout)
        self.max_sockets = settings.esl_max_sockets
        if max_body is None:
            max_body = settings.esl_max_frame_size
        self.settings = SocketSettings(
            connect_timeout=settings.esl_connect_timeout / 1000.0, cmd_timeout=settings.esl_cmd_timeout / 1000.0,
            max_body=max_body, liveness_timeout=liveness_timeout, idle_probe=idle_probe,
            busy_timeout=busy_timeout, stable_after=stable_after, max_gap=max_gap,
            failure_reminder=failure_reminder)
        self.counters = EslCounters(stats)
        self.event_sink: Callable[[EslSocket, str, bytes], None] | None = None
        self._sockets: dict[tuple[str, int], EslSocket] = {}
        self._consumers: list[EslConsumer] = []
        self._reaper: gevent.Greenlet | None = None
        self._stopped = False
        self._closed_since_trim = 0
        self._closed_at_last_tick = 0
        self._bad_events = LogThrottle()
        self._sink_failures = LogThrottle()
        stats.gauge(STATS_GROUP, "sockets", lambda: len(self._sockets), "ESL sockets known now")
        stats.gauge(STATS_GROUP, "connected_sockets",
                    lambda: sum(1 for s in self._sockets.values() if s.connected),
                    "ESL sockets connected and logged in now")

    @property
    def connect_timeout(self) -> float:
        return self.settings.connect_timeout

    @property
    def running(self) -> bool:
        return not self._stopped

    # -- sockets ------------------------------------------------------------------

    def find(self, host: str, port: int | None = None) -> EslSocket | None:
        return self._sockets.get((host, port or DEFAULT_PORT))

    def get(self, host: str, port: int | None = None, username: str | None = None,
            password: str | None = None, limited: bool = False) -> EslSocket:
        """The socket for (host, port), created if needed — which takes a
        password (EslNoPassword) and, when `limited` (MI calls), room under
        `esl_max_sockets` (EslTooManySockets). An existing socket's
        credentials are not touched (see EslSocket.update_credentials)."""
        port = port or DEFAULT_PORT
        key = (host, port)
        sock = self._sockets.get(key)
        if sock is not None:
            return sock
        if not password:
            raise EslNoPassword(f"no password to create the ESL socket {host}:{port}")
        if not host:
            raise ValueError("empty host")
        if limited and self.max_sockets and len(self._sockets) >= self.max_sockets:
            raise EslTooManySockets(f"{len(self._sockets)} ESL sockets already (esl_max_sockets)")
        sock = self._sockets[key] = EslSocket(self, host, port, username, password)
        return sock

    def sockets(self) -> list[EslSocket]:
        return list(self._sockets.values())

    # -- what the sockets call (SocketOwner) ---------------------------------------

    def revive(self, sock: EslSocket) -> None:
        """A closed socket is referenced again: register it again."""
        key = (sock.host, sock.port)
        if self._sockets.get(key, sock) is not sock:
            raise EslError(f"socket {sock.name} was closed and replaced")
        if self._stopped:
            raise EslError("the ESL manager is stopped")
        sock.reopen()
        self._sockets[key] = sock

    def give_up(self, sock: EslSocket, reason: str) -> None:
        """Forget `sock` and close it."""
        key = (sock.host, sock.port)
        if self._sockets.get(key) is sock:
            del self._sockets[key]
        if not sock.closed:
            log.info("ESL %s: closing (%s)", sock.name, reason)
            self._closed_since_trim += 1
        sock.close(reason)
        for consumer in self._consumers:
            consumer.forget(sock)

    def deliver(self, sock: EslSocket, name: str, body: bytes) -> None:
        """A subscribed event (reader greenlet): to the sink, then the consumers."""
        sink = self.event_sink
        if sink is not None:
            try:
                sink(sock, name, body)
            except Exception:
                self._sink_failed(sock, name)
        for consumer in self._consumers:
            consumer.offer(sock, name, body)

    def bad_event(self, sock: EslSocket, body: bytes) -> None:
        """An event without a usable Event-Name (already counted as dropped)."""
        if self._bad_events.hit():
            log.warning("ESL %s: dropped an event without a usable Event-Name (%d bytes: %s; "
                        "%d more since the last such warning)", sock.name, len(body), printable(body, 80),
                        self._bad_events.take_suppressed())

    # -- consumers ---------------------------------------------------------------

    def add_consumer(self, name: str, handler: ConsumerHandler, maxsize: int = 10_000) -> EslConsumer:
        """Deliver every relayed event to `handler(socket, name, body)` from
        its own greenlet, through a queue of at most `maxsize` events."""
        consumer = EslConsumer(name, handler, maxsize)
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
            self.give_up(sock, "shutting down")
        for consumer in self._consumers:
            consumer.close()
        self._consumers = []

    def _reap_loop(self) -> None:
        settings = self.settings
        step = max(0.01, min(TICK, settings.idle_probe / 2, settings.liveness_timeout / 4))
        last_reap = time.monotonic()
        while True:
            gevent.sleep(step)
            now = time.monotonic()
            for sock in list(self._sockets.values()):
                sock.check_liveness(now)
            if now - last_reap >= TICK:
                last_reap = now
                self.reap()
                self._trim_after_closures()

    def _trim_after_closures(self) -> None:
        """Once many sockets went and no more went for a tick (their
        greenlets are gone too), hand the freed heap back to the OS. When
        at least as many went as are left, with a full collection first
        (`heap.trim`: the free lists hold blocks of the sockets' heap); it
        costs time in proportion to what is left (200 ms with 10,000 live
        sockets), so a few sockets going out of many do not pay for it.
        The socket table is rebuilt too: a dict keeps the room of its
        largest size (10,000 sockets: 300 KB) after its entries go."""
        closed = self._closed_since_trim
        if closed >= TRIM_AFTER and closed == self._closed_at_last_tick:
            self._sockets = dict(self._sockets)
            heap.trim(collect=closed >= len(self._sockets))
            closed = self._closed_since_trim = 0
        self._closed_at_last_tick = closed

    def reap(self) -> None:
        """Close sockets nobody needs any more (docs/protocols/scripting.md §7.3)."""
        now = time.monotonic()
        for sock in list(self._sockets.values()):
            if sock.refs > 0:
                continue
            idle = sock.idle_for(now)
            if not sock.esl_used:
                if idle >= UNUSED_GRACE:
                    self.give_up(sock, "not used")
            elif idle >= self.no_esl_timeout:
                self.give_up(sock, f"no ESL command for {self.no_esl_timeout:g} s")
            elif not sock.connected and sock.attempts >= ESL_ONLY_MAX_ATTEMPTS:
                self.give_up(sock, f"{sock.attempts} failed connection attempts")

    def _sink_failed(self, sock: EslSocket, name: str) -> None:
        """A bug in the event sink: count it, log it at most every 10 s."""
        self.counters.sink_errors.value += 1
        if self._sink_failures.hit():
            log.exception("ESL %s: the event sink failed on %s (%d failures so far)",
                          sock.name, printable(name), self.counters.sink_errors.value)

"""EVI delivery: one bounded queue and one sender greenlet per destination.

A *destination* is a distinct target, identified by its whole address (a UDP
address, a unix path, a TCP host:port shared by every `tcp:`/`jsonrpc:`
subscriber of it, an XML-RPC server and path, an HTTP URL). Raising an
event only appends the payload bytes to the destination's queue (`put`,
never blocks, never raises); the sender greenlet drains the queue with the
transport's `deliver`. The queue is a `queue.NotificationQueue`: bounded by
events (`queue_size`) and bytes (`queue_bytes`) and inside the process-wide
byte budget; what it drops is counted here. A payload that could not be
written is kept (in `inflight`) and retried with a backoff capped at 1 s,
so a peer that comes back gets the backlog within a second.

Counters: per destination (`status()`, MI `evi_status`) and in total (stats
group `evi`: `notifications_sent`, `notifications_dropped`,
`notifications_retried`, `send_errors`). Warnings are logged under the
transport's module name, at most one line per destination every
`LOG_INTERVAL` seconds for a repeated error (the next line says how many
were not logged).

Lifecycle: `start`, `retire` (no subscriber left: send what is queued while
it works, at most `drain_timeout`, never retry; drop the rest),
`drain(deadline)` (at shutdown: keep sending until the queue
is empty or the deadline passes), `stop` (end; what is still queued is
counted as dropped by `drop_queued`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

import gevent
from gevent.event import Event

from ..reasons import short_reason
from .queue import DEFAULT_QUEUE_BYTES, NotificationQueue, QueueBudget

if TYPE_CHECKING:
    from ..stats import Stats

__all__ = ["Destination", "EviCounters", "DEFAULT_QUEUE_SIZE", "DEFAULT_DRAIN_TIMEOUT",
           "LOG_INTERVAL"]

DEFAULT_QUEUE_SIZE = 100000
DEFAULT_DRAIN_TIMEOUT = 3.0   # seconds given to the queues at shutdown
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0          # a peer that comes back is retried within 1 s
LOG_INTERVAL = 10.0        # one warning per destination per interval for a repeated error


class EviCounters:
    """The process-wide `evi:*` counters (Stats objects)."""

    def __init__(self, stats: Stats):
        self.sent = stats.counter("evi", "notifications_sent", "notifications delivered to EVI destinations")
        self.dropped = stats.counter("evi", "notifications_dropped",
                                     "notifications dropped (queue full, expired, destination gone)")
        self.retried = stats.counter("evi", "notifications_retried", "notifications sent again after a failed attempt")
        self.errors = stats.counter("evi", "send_errors", "failed send attempts to EVI destinations")


class Closable(Protocol):
    """What a destination may keep open between deliveries."""

    def close(self) -> None: ...


class Destination:
    """Base class: the queue, the sender loop and the counters.

    Subclasses set `transport` and `log` (their module's logger: log lines
    carry the module name) and implement `deliver()` (send some of the
    queue; raise OSError on failure after putting unsent payloads back into
    `inflight`). One that keeps a connection open between deliveries holds
    it in `_conn` (anything with `close()`): the base `close()` drops it.
    `idle_wait()` may be overridden to watch the connection while the
    queue is empty.
    """

    transport = "?"
    log = logging.getLogger("opensips_fs.evi")
    _conn: Closable | None = None

    def __init__(self, key: tuple, label: str, queue_size: int, counters: EviCounters, *,
                 queue_bytes: int = DEFAULT_QUEUE_BYTES, budget: QueueBudget | None = None):
        self.key = key
        self.label = label
        self.queue = NotificationQueue(queue_size, queue_bytes, budget, self._queue_dropped)
        self.inflight: list = []
        self.counters = counters
        self.sent = self.dropped = self.retried = self.send_errors = 0
        self.state = "idle"
        self.last_error = ""
        self.refs = 0
        self._idle = True
        self._wakeup = Event()
        self._greenlet: gevent.Greenlet | None = None
        self._failing = False     # the last delivery failed
        self._retiring = False
        self._retire_timer: gevent.Greenlet | None = None
        self.drain_timeout: float = DEFAULT_DRAIN_TIMEOUT   # the registry sets its module's
        self._last_log = float("-inf")
        self._last_message = ""
        self._unlogged = 0

    # -- producer side (called from the raising greenlet; never blocks) ----
    def put(self, payload: bytes) -> None:
        self.queue.put(payload)
        if self._idle:
            self._idle = False
            self._wakeup.set()

    def _queue_dropped(self, count: int) -> None:
        self.dropped += count
        self.counters.dropped.value += count

    def failed_to_build(self, exc: Exception) -> None:
        """A notification for this destination could not be built or queued:
        it is lost for this destination only (counted, logged)."""
        self.send_errors += 1
        self.counters.errors.value += 1
        self._queue_dropped(1)
        self.warn(f"notification not built: {exc.__class__.__name__}: {exc}")

    # -- lifecycle --------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._greenlet is not None

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None and greenlet is not gevent.getcurrent():
            greenlet.kill(block=False)
        self._close_quietly()
        self.state = "closed"

    def retire(self) -> None:
        """No subscriber references us any more. What is queued is still
        sent while the subscriber takes it, for at most `drain_timeout`; at
        the first failure (or at once when it is failing already), or when
        that time is up, the rest is dropped (counted and logged) and the
        sender ends: an unsubscribed destination is never retried."""
        self._retiring = True
        if not self.running or self._failing or not self.queued:
            self._give_up()
            return
        self._retire_timer = gevent.spawn_later(self.drain_timeout, self._give_up)
        self._idle = False
        self._wakeup.set()

    def _give_up(self) -> None:
        timer, self._retire_timer = self._retire_timer, None
        if timer is not None and timer is not gevent.getcurrent():
            timer.kill(block=False)
        self.drop_queued("unsubscribed with %d undelivered notifications")
        self.stop()

    def drain(self, deadline: float) -> bool:
        """Keep sending until the queue is empty or `deadline` (monotonic)
        passes; True when nothing is left. Does not stop the sender."""
        while (self.queued or self.unconfirmed()) and self.running:
            if time.monotonic() >= deadline:
                return False
            gevent.sleep(0.02)
        return not self.queued

    def unconfirmed(self) -> int:
        """Payloads written but not known to have arrived (0 unless the
        transport can tell)."""
        return 0

    @property
    def queued(self) -> int:
        return len(self.queue) + len(self.inflight)

    def status(self) -> dict:
        return {
            "socket": self.label,
            "transport": self.transport,
            "queued": self.queued,
            "queued_bytes": self.queue.bytes + sum(len(p) for p in self.inflight),
            "sent": self.sent,
            "dropped": self.dropped,
            "retried": self.retried,
            "send_errors": self.send_errors,
            "state": self.state,
            "last_error": self.last_error,
        }

    # -- sender -----------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.0
        try:
            while True:
                if not self.queue and not self.inflight:
                    if self._retiring:
                        break
                    self._idle = True
                    self._wakeup.clear()
                    self.idle_wait()
                    continue
                try:
                    self.deliver()
                    backoff = 0.0
                    self._failing = False
                except Exception as exc:   # OSError, or a bug: never kill the sender
                    if not isinstance(exc, OSError):
                        self.log.exception("EVI %s: delivery failed", self.label)
                    self._failed(exc)
                    self._failing = True
                    if self._retiring:
                        break
                    if backoff:
                        gevent.sleep(backoff)
                    # the first retry is immediate (a stale keep-alive socket)
                    backoff = min(BACKOFF_MAX, (backoff * 2) or BACKOFF_FIRST)
                    if self.state != "closed":
                        self.state = "backoff"
        finally:
            if self._greenlet is gevent.getcurrent():
                self._greenlet = None
                self._close_quietly()
                if self._retiring:
                    self._give_up()

    def idle_wait(self) -> None:
        """Wait for the next payload (`put` sets `_wakeup`)."""
        self._wakeup.wait()

    def _failed(self, exc: Exception) -> None:
        self.send_errors += 1
        self.counters.errors.value += 1
        self.last_error = short_reason(exc)
        self.warn(self.last_error)
        self._close_quietly()

    def warn(self, message: str) -> None:
        """Log a warning for this destination, rate-limited: a message equal
        to the last one logged waits LOG_INTERVAL seconds; the lines skipped
        meanwhile are counted and mentioned by the next one."""
        now = time.monotonic()
        if message == self._last_message and now - self._last_log < LOG_INTERVAL:
            self._unlogged += 1
            return
        if self._unlogged:
            self.log.warning("EVI %s: %s (%d similar lines not logged)",
                             self.label, message, self._unlogged)
            self._unlogged = 0
        else:
            self.log.warning("EVI %s: %s", self.label, message)
        self._last_message = message
        self._last_log = now

    def drop_queued(self, why: str) -> None:
        """Count everything still queued as dropped and forget it; when
        something was lost, log `why` (a format taking that number)."""
        lost = self.queue.clear() + len(self.inflight)
        self.inflight = []
        self._queue_dropped(lost)
        if lost:
            self.log.warning("EVI %s: " + why, self.label, lost)

    def _delivered(self, n: int) -> None:
        self.sent += n
        self.counters.sent.value += n

    def _retrying(self, n: int) -> None:
        self.retried += n
        self.counters.retried.value += n

    def _close_quietly(self) -> None:
        try:
            self.close()
        except OSError:
            pass

    # -- transport hooks ----------------------------------------------------
    def deliver(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if self.state == "connected":
            self.state = "idle"

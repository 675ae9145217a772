"""EVI delivery: one bounded queue and one sender greenlet per destination.

A *destination* is a distinct target (a UDP address, a unix path, a TCP
host:port shared by every `tcp:`/`jsonrpc:` subscriber of it, an XML-RPC
server, an HTTP origin). Raising an event only appends the payload bytes to
the destination's queue (`put`, never blocks); the sender greenlet drains
the queue with the transport's `deliver`. A full queue drops its oldest
payload and counts it. A payload that could not be written is kept (in
`inflight`) and retried with a backoff capped at 1 s, so a peer that comes
back gets the backlog within a second.

Counters: per destination (`evi_status`) and in total (stats group `evi`:
`notifications_sent`, `notifications_dropped`, `notifications_retried`,
`send_errors`).
"""

from __future__ import annotations

import logging
import time
from collections import deque

import gevent
from gevent.event import Event

from ..reasons import short_reason

__all__ = ["Destination", "EviCounters", "DEFAULT_QUEUE_SIZE"]

log = logging.getLogger("opensips_fs.evi")

DEFAULT_QUEUE_SIZE = 100000
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0          # a peer that comes back is retried within 1 s
LINGER = 5.0               # an unreferenced destination still flushes this long


class EviCounters:
    """The process-wide `evi:*` counters (Stats objects)."""

    def __init__(self, stats):
        self.sent = stats.counter("evi", "notifications_sent")
        self.dropped = stats.counter("evi", "notifications_dropped")
        self.retried = stats.counter("evi", "notifications_retried")
        self.errors = stats.counter("evi", "send_errors")


class Destination:
    """Base class: the queue, the sender loop and the counters.

    Subclasses set `transport` and implement `deliver()` (send some of the
    queue; raise OSError on failure after putting unsent payloads back into
    `inflight`). One that keeps a connection open between deliveries holds
    it in `_conn` (anything with `close()`): the base `close()` drops it.
    """

    transport = "?"
    batch = 256
    _conn = None

    def __init__(self, key, label: str, queue_size: int, counters: EviCounters):
        self.key = key
        self.label = label
        self.queue: deque = deque()
        self.queue_size = max(1, int(queue_size))
        self.inflight: list = []
        self.counters = counters
        self.sent = self.dropped = self.retried = self.send_errors = 0
        self.state = "idle"
        self.last_error = ""
        self.refs = 0
        self._idle = True
        self._wakeup = Event()
        self._greenlet = None
        self._retiring_since = None
        self.on_retired = None   # callback(dest) once an unreferenced one ends

    # -- producer side (called from the raising greenlet; never blocks) ----
    def put(self, payload) -> None:
        queue = self.queue
        if len(queue) >= self.queue_size:
            queue.popleft()
            self.dropped += 1
            self.counters.dropped.value += 1
        queue.append(payload)
        if self._idle:
            self._idle = False
            self._wakeup.set()

    # -- lifecycle --------------------------------------------------------
    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=False)
        self._close_quietly()
        self.state = "closed"

    def retire(self) -> None:
        """No subscriber references us any more: flush what is queued, then end."""
        self._retiring_since = time.monotonic()
        self._idle = False
        self._wakeup.set()

    def revive(self) -> None:
        self._retiring_since = None

    @property
    def queued(self) -> int:
        return len(self.queue) + len(self.inflight)

    def status(self) -> dict:
        return {
            "socket": self.label,
            "transport": self.transport,
            "queued": self.queued,
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
                    if self._retiring_since is not None:
                        break
                    self._idle = True
                    self._wakeup.clear()
                    self._wakeup.wait()
                    continue
                try:
                    self.deliver()
                    backoff = 0.0
                except Exception as exc:   # OSError, or a bug: never kill the sender
                    if not isinstance(exc, OSError):
                        log.exception("EVI %s: delivery failed", self.label)
                    self._failed(exc)
                    if (self._retiring_since is not None
                            and time.monotonic() - self._retiring_since > LINGER):
                        self.drop_queued("unsubscribed and unreachable, %d notifications dropped")
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
                if self.on_retired is not None and self._retiring_since is not None:
                    self.on_retired(self)

    def _failed(self, exc: Exception) -> None:
        self.send_errors += 1
        self.counters.errors.value += 1
        message = short_reason(exc)
        if message != self.last_error:
            log.warning("EVI %s: %s", self.label, message)
        self.last_error = message
        self._close_quietly()

    def drop_queued(self, why: str) -> None:
        """Count everything still queued as dropped and forget it; when
        something was lost, log `why` (a format taking that number)."""
        lost = len(self.queue) + len(self.inflight)
        self.queue.clear()
        self.inflight = []
        self.dropped += lost
        self.counters.dropped.value += lost
        if lost:
            log.warning("EVI %s: " + why, self.label, lost)

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

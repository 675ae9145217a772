"""Generated event load for one simulated box: ``burst`` (K events as fast
as each subscriber reads: back-pressure, nothing lost) and a steady
``rate`` (M events per second, no back-pressure: a slow reader loses events
as it would with FreeSWITCH).

Every generated event has its own Event-Sequence and a Burst-Index; the
event is serialised once per format with markers in those two values, so
each further frame costs two %-formats instead of a full serialisation.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import gevent

from .events import Event, is_event_name

if TYPE_CHECKING:
    from .server import FsSimulator

__all__ = ["LoadGenerator"]

_BURST_MARK = "SIMSEQMARKQZX"  # placeholders only letters: unchanged by every format
_INDEX_MARK = "SIMIDXMARKQZX"
RATE_TICK = 0.01  # the steady rate fires in batches this many seconds apart

# (name, subclass, headers, body) of the generated events
_Shape = tuple[str, "str | None", list[tuple[str, str]], "str | None"]


class LoadGenerator:
    """The load of one box: it builds events through the box
    (``make_event``, ``skip_seq``) and queues them on ``box.subscribers``."""

    def __init__(self, box: FsSimulator):
        self.box = box
        self._rate_glet: gevent.Greenlet | None = None

    def burst(self, count: int, name: str = "CUSTOM", subclass: str | None = "sim::burst",
              size: int | None = None, chunk: int = 500, window: int = 20000,
              body_size: int | None = None) -> int:
        """Send ``count`` events as fast as each subscribed client reads.
        Returns the number of events generated; blocks the calling greenlet
        until all are queued."""
        shape = _load_shape(name, subclass, ("Burst-Count", str(count)), "Burst-Payload", size, body_size)
        done = 0
        window = max(min(window, self.box.settings.queue_size), chunk)
        while done < count:
            n = min(chunk, count - done)
            self._fire_series(shape, n, done, window)
            done += n
            gevent.sleep(0)
        return done

    def set_rate(self, per_second: float, name: str = "CUSTOM", subclass: str | None = "sim::load",
                 size: int | None = None, body_size: int | None = None) -> None:
        """Fire ``per_second`` events per second from now on (0 stops)."""
        self.stop()
        if per_second and per_second > 0:
            per_second = float(per_second)
            shape = _load_shape(name, subclass, ("Load-Rate", "%g" % per_second), "Load-Payload", size, body_size)
            self._rate_glet = gevent.spawn(self._rate_loop, per_second, shape)

    def stop(self) -> None:
        """Stop the steady rate (a burst in progress runs to its end)."""
        if self._rate_glet is not None:
            self._rate_glet.kill(block=False)
            self._rate_glet = None

    def _rate_loop(self, per_second: float, shape: _Shape) -> None:
        owed = 0.0
        index = 0
        next_at = time.monotonic()
        while True:
            owed += per_second * RATE_TICK
            n = int(owed)
            if n:
                owed -= n
                self._fire_series(shape, n, index)
                index += n
            next_at += RATE_TICK
            delay = next_at - time.monotonic()
            if delay < -1.0:
                next_at = time.monotonic()
            gevent.sleep(max(0.0, delay))

    def _fire_series(self, shape: _Shape, n: int, index: int, window: int | None = None) -> None:
        """``n`` events of one ``_load_shape`` to every client that wants
        them, Event-Sequence and Burst-Index counting up (from the next
        sequence number and from ``index``); with ``window``, first wait until
        each client has at most ``window - n`` events queued."""
        name, subclass, headers, body = shape
        event = self.box.make_event(name, headers, body, subclass)
        first = event.seq
        assert first is not None  # make_event numbers every event
        self.box.skip_seq(n - 1)
        targets = self.box.subscribers(event)
        marked = [(k, _BURST_MARK if k == "Event-Sequence" else v) for k, v in event.headers]
        blobs = {}
        for client in targets:
            if client.format not in blobs:
                blobs[client.format] = _burst_blob(client.format, marked, body, first, n, index)
        for client in targets:
            if window is None or client.wait_below(window - n):
                client.enqueue_event(blobs[client.format], n, first, first + n - 1)


def _load_shape(name: str, subclass: str | None, counter: tuple[str, str], payload_header: str,
                size: int | None, body_size: int | None) -> _Shape:
    """(name, subclass, headers, body) of generated load events: a
    Burst-Index, the ``counter`` header, ``size`` bytes of payload header,
    ``body_size`` bytes of body."""
    canonical = is_event_name(name) or name
    headers = [("Burst-Index", "0"), counter]
    if size:
        headers.append((payload_header, "x" * int(size)))
    return (canonical, subclass if canonical == "CUSTOM" else None, headers,
            "b" * int(body_size) if body_size else None)


def _burst_blob(fmt: str, headers: list[tuple[str, str]], body: str | None, first: int, n: int,
                index0: int) -> bytes:
    """``n`` frames of one event shape with Event-Sequence first..first+n-1
    and Burst-Index index0..: the event is serialised once with markers in
    those two values, then each frame costs two %-formats."""
    headers = [(k, _INDEX_MARK if k == "Burst-Index" else v) for k, v in headers]
    payload = Event("x", headers, body).frame(fmt)
    head, _, rest = payload.partition(b"\n\n")
    rest = rest.replace(b"%", b"%%").replace(_BURST_MARK.encode(), b"%d").replace(_INDEX_MARK.encode(), b"%d")
    ctype = head.split(b"\n")[1]
    out = []
    index = index0
    for seq in range(first, first + n):
        frame_body = rest % (seq, index)
        out.append(b"Content-Length: %d\n%s\n\n" % (len(frame_body), ctype))
        out.append(frame_body)
        index += 1
    return b"".join(out)

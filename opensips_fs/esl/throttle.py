"""A warning that may repeat at any rate (one per bad frame from a peer, one
per failing event) is written at most once per interval, with the number of
occurrences it stands for."""

from __future__ import annotations

import time

__all__ = ["LogThrottle"]


class LogThrottle:
    """`hit()` counts one occurrence and says whether to log it now: True for
    the first one and then at most once per `interval` seconds. `suppressed`
    is how many were not logged since the last True."""

    __slots__ = ("interval", "total", "suppressed", "_last")

    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self.total = 0
        self.suppressed = 0
        self._last = -1e18

    def hit(self, now: float | None = None) -> bool:
        self.total += 1
        now = time.monotonic() if now is None else now
        if now - self._last >= self.interval:
            self._last = now
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        """How many occurrences were not logged since the last one that was."""
        count, self.suppressed = self.suppressed, 0
        return count

"""MI calls counted for the metrics page: requests by command, transport and
outcome, and a latency histogram per command.

`MiRegistry` records every request here; recording is two dict look-ups
and a bisect, so the MI hot path does not notice it. The `/metrics` page
reads the figures through `calls()` and `latencies()`. Every count only
grows (nothing here is reset by `reset_statistics`), and the label values
are bounded: the registry passes a registered command's name, or
``unknown`` / ``invalid`` for anything else, never what a client typed.
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["LATENCY_BUCKETS", "Latency", "MiCallStats", "INVALID", "UNKNOWN"]

# Upper bounds (seconds) of the latency buckets: an fs_list answers in tens
# of microseconds, an fs_reload or a freeswitch_esl waits on the network.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

UNKNOWN = "unknown"    # a method no command answers to (or an ambiguous one)
INVALID = "invalid"    # a body that is not a JSON-RPC 2.0 request


class Latency:
    """One command's latency histogram: a count per bucket (not cumulative;
    the last slot counts what is over every bound), the count and the sum."""

    __slots__ = ("counts", "count", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(`le` bound, requests at or under it), ending with ``+Inf``."""
        total = 0
        buckets = []
        for bound, count in zip(LATENCY_BUCKETS, self.counts):
            total += count
            buckets.append((repr(bound), total))
        buckets.append(("+Inf", self.count))
        return buckets


class MiCallStats:
    """Counts and latencies of the MI requests answered."""

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str, str], int] = {}
        self._latency: dict[str, Latency] = {}

    def record(self, command: str, transport: str, ok: bool, seconds: float) -> None:
        key = (command, transport, "ok" if ok else "error")
        self._calls[key] = self._calls.get(key, 0) + 1
        latency = self._latency.get(command)
        if latency is None:
            latency = self._latency[command] = Latency()
        latency.observe(seconds)

    def calls(self) -> list[tuple[str, str, str, int]]:
        """(command, transport, outcome, requests), outcome ``ok`` or ``error``."""
        return [(*key, count) for key, count in self._calls.items()]

    def latencies(self) -> list[tuple[str, Latency]]:
        return list(self._latency.items())

"""Statistics: named counters and gauges shared by every room.

OpenSIPS names a statistic `group:name`; MI `get_statistics`,
`list_statistics` and `reset_statistics` and the Prometheus `/metrics` page
read them from here. A counter is *incremental* (events received, sent,
dropped…) and can be reset; a gauge is *non-incremental* and its value comes
from a function (queue depth, connected sockets…).

Hot paths keep a reference to their `Counter` and do `counter.value += 1`.
`reset_statistics` zeroes `value` (what MI shows) but keeps what it took
away in `before_reset`, so `total` — what Prometheus scrapes — never goes
down. Each statistic carries a one-line `help` for the `/metrics` page.
"""

from __future__ import annotations

from typing import Callable, Iterator


class Counter:
    """An incremental statistic."""

    __slots__ = ("group", "name", "help", "value", "before_reset")
    incremental = True

    def __init__(self, group: str, name: str, help: str = ""):
        self.group = group
        self.name = name
        self.help = help
        self.value = 0
        self.before_reset = 0

    @property
    def total(self) -> int:
        """Everything counted since start, resets included (monotonic)."""
        return self.before_reset + self.value

    def reset(self) -> None:
        self.before_reset += self.value
        self.value = 0


class Gauge:
    """A non-incremental statistic whose value is computed on demand."""

    __slots__ = ("group", "name", "func", "help")
    incremental = False

    def __init__(self, group: str, name: str, func: Callable[[], int], help: str = ""):
        self.group = group
        self.name = name
        self.func = func
        self.help = help

    @property
    def value(self) -> int:
        return int(self.func())

    def reset(self) -> None:
        """Gauges are not resettable (OpenSIPS: STAT_NO_RESET)."""


class Stats:
    """All statistics of the process, in registration order."""

    def __init__(self) -> None:
        self._stats: dict[str, Counter | Gauge] = {}

    def counter(self, group: str, name: str, help: str = "") -> Counter:
        """Return the counter `group:name`, registering it on first use."""
        key = f"{group}:{name}"
        stat = self._stats.get(key)
        if stat is None:
            stat = self._stats[key] = Counter(group, name, help)
        if not isinstance(stat, Counter):
            raise ValueError(f"statistic {key} is a gauge")
        return stat

    def gauge(self, group: str, name: str, func: Callable[[], int], help: str = "") -> Gauge:
        """Register (or replace) the gauge `group:name`."""
        stat = self._stats[f"{group}:{name}"] = Gauge(group, name, func, help)
        return stat

    def __iter__(self) -> Iterator[Counter | Gauge]:
        return iter(list(self._stats.values()))

    def find(self, name: str) -> list[Counter | Gauge]:
        """Every statistic whose bare name is `name` (any group)."""
        return [s for s in self._stats.values() if s.name == name]

    def in_group(self, group: str) -> list[Counter | Gauge]:
        return [s for s in self._stats.values() if s.group == group]

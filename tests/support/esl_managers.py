"""ESL managers for tests: started with an event sink, stopped afterwards,
and their `freeswitch` statistics read by name."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from opensips_fs.config import FreeswitchSettings
from opensips_fs.esl.manager import ConsumerHandler, EslManager
from opensips_fs.stats import Stats


def manager_factory(stats: Stats, make_sink: Callable[[], ConsumerHandler]) -> Iterator[Callable[..., EslManager]]:
    """For a pytest fixture (`yield from`): a function that starts an
    EslManager on `stats` with a new sink; every manager made is stopped
    when the fixture ends."""
    managers: list[EslManager] = []

    def make(settings: FreeswitchSettings | None = None, **kwargs: Any) -> EslManager:
        mgr = EslManager(settings or FreeswitchSettings(), stats, **kwargs)
        mgr.event_sink = make_sink()
        mgr.start()
        managers.append(mgr)
        return mgr

    yield make
    for mgr in managers:
        mgr.stop()


def stat(stats: Stats, name: str) -> int | float:
    """The value of the `freeswitch` statistic `name`."""
    return next(s.value for s in stats if s.group == "freeswitch" and s.name == name)

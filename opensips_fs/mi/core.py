"""The `core:` and `statistics:` MI commands (docs/protocols/mi.md §7), with OpenSIPS' shapes.

`core_commands(ctx)` gives uptime, version, pwd, arg, which, ps, kill,
log_level and help; `statistics_commands(stats)` gives get/list/reset/
reset_all over the service's `Stats`. The app registers them in the order
statistics, core, evi, freeswitch_scripting.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

from .. import __version__
from ..stats import Counter, Gauge, Stats
from .commands import MiCommand, MiError, Params, invalid_params
from .registry import MiRegistry

__all__ = ["CoreContext", "core_commands", "statistics_commands", "server_string"]

EMULATED_VERSION = "4.1.0-dev"
UNKNOWN_COMMAND = MiError(404, "unknown MI command")
STATISTICS_NOT_FOUND = MiError(404, "Statistics Not Found")
NO_HELP = "not available for this command"
HELP_USAGE = "Usage: help mi_cmd - returns information about 'mi_cmd'"
# OpenSIPS's levels: -3 alert .. 4 debug. OpenSIPS takes any integer; a level
# outside them is refused here (it would only be clamped).
LOG_LEVEL_MIN, LOG_LEVEL_MAX = -3, 4
LOG_LEVEL_OUT_OF_RANGE = invalid_params(f"Log level out of range ({LOG_LEVEL_MIN}..{LOG_LEVEL_MAX})")


def server_string() -> str:
    """`OpenSIPS (<version> (<arch>/<os>))` — opensips-cli parses it."""
    machine = (platform.machine() or "unknown").lower()
    system = (platform.system() or "unknown").lower()
    return f"OpenSIPS ({EMULATED_VERSION} ({machine}/{system}))"


@dataclass
class CoreContext:
    """What the core commands need from the app.

    `processes()` gives the Types listed by `ps` (our logical workers);
    `shutdown` is what `kill` calls (default: SIGTERM to ourselves, which
    the app handles as a graceful stop)."""

    started_at: float
    stats: Stats
    processes: Callable[[], list[str]]
    get_log_level: Callable[[], int]
    set_log_level: Callable[[int], None]
    registry: MiRegistry
    shutdown: Callable[[], None] | None = None


def core_commands(ctx: CoreContext) -> list[MiCommand]:
    handlers = _CoreHandlers(ctx)
    core = "core"
    return [
        MiCommand(core, "uptime", None, [[]], handlers.uptime,
                  "prints various time information about OpenSIPS - when it started to run, for how long it runs"),
        MiCommand(core, "version", None, [[], ["revision"]], handlers.version,
                  "prints the version string of a runningOpenSIPS"),
        MiCommand(core, "pwd", None, [[]], handlers.pwd, "prints the working directory of OpenSIPS"),
        MiCommand(core, "arg", None, [[]], handlers.arg, "returns the full list of arguments used at startup"),
        MiCommand(core, "which", None, [[], ["command"]], handlers.which, "lists all available MI commands"),
        MiCommand(core, "ps", None, [[]], handlers.ps, "lists all processes used by OpenSIPS"),
        MiCommand(core, "kill", None, [[]], handlers.kill, "terminates OpenSIPS"),
        MiCommand(core, "log_level", None, [[], ["level"], ["level", "pid"]], handlers.log_level,
                  "gets/sets the per process or global log level in OpenSIPS"),
        MiCommand(core, "help", None, [[], ["mi_cmd"]], handlers.help,
                  "prints information about MI commands usage"),
    ]


class _CoreHandlers:
    """The `core:` command handlers, over the app's `CoreContext`."""

    def __init__(self, ctx: CoreContext):
        self.ctx = ctx
        self.registry = ctx.registry

    def uptime(self, params: Params) -> dict[str, str]:
        now = time.time()
        return {
            "Now": time.ctime(now),
            "Up since": time.ctime(self.ctx.started_at),
            "Up time": f"{int(now - self.ctx.started_at)} [sec]",
        }

    def version(self, params: Params) -> dict[str, str]:
        if "revision" in params:
            params.string("revision")     # typed as OpenSIPS types it; no revision of ours
        return {"Server": server_string(), "opensips-fs": __version__}

    def pwd(self, params: Params) -> dict[str, str]:
        try:
            return {"WD": os.getcwd()}
        except OSError:
            raise MiError(500, "Internal Error") from None

    def arg(self, params: Params) -> list[str]:
        return list(sys.argv)

    def which(self, params: Params) -> list:
        registry = self.registry
        if "command" not in params:
            return registry.which_names()
        name = params.string("command")
        if name.endswith(":"):
            names = [c.canonical for c in registry.commands() if c.canonical.startswith(name)]
            if not names:
                raise UNKNOWN_COMMAND
            return names
        command = registry.resolve(name)
        if command is None:
            raise UNKNOWN_COMMAND
        return [list(recipe) for recipe in command.recipes]

    def _process_rows(self) -> list[tuple[int, str]]:
        return list(enumerate(self.ctx.processes()))

    def ps(self, params: Params) -> dict[str, list[dict]]:
        pid = os.getpid()
        return {"Processes": [{"ID": i, "PID": pid, "Type": kind} for i, kind in self._process_rows()]}

    def kill(self, params: Params) -> str:
        stop = self.ctx.shutdown or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        _after_reply(stop)
        return "OK"

    def log_level(self, params: Params) -> dict:
        ctx = self.ctx
        if "level" not in params:
            pid = os.getpid()
            level = ctx.get_log_level()
            return {"Processes": [
                {"PID": pid, "Log level": level, "Type": kind} for _, kind in self._process_rows()
            ]}
        level = params.int("level")
        if not LOG_LEVEL_MIN <= level <= LOG_LEVEL_MAX:
            raise LOG_LEVEL_OUT_OF_RANGE
        if "pid" in params:
            if params.int("pid") != os.getpid():
                raise invalid_params("Bad PID")
            ctx.set_log_level(level)
            return {"Log level": level}
        ctx.set_log_level(level)
        return {"New global log level": level}

    def help(self, params: Params) -> str | dict[str, str]:
        if "mi_cmd" not in params:
            return HELP_USAGE
        command = self.registry.resolve(params.string("mi_cmd"))
        if command is None:
            raise UNKNOWN_COMMAND
        return {"Help": command.help or NO_HELP, "Exported by": command.module}


def _after_reply(action: Callable[[], None], delay: float = 0.2) -> None:
    """Run `action` shortly, once the reply has had time to leave."""
    try:
        import gevent
    except ImportError:  # pragma: no cover - gevent is a dependency
        action()
        return
    gevent.spawn_later(delay, action)


def statistics_commands(stats: Stats) -> list[MiCommand]:
    handlers = _StatisticsHandlers(stats)
    module = "statistics"
    return [
        MiCommand(module, "get", "get_statistics", [["statistics"]], handlers.get,
                  "prints the statistics (all, group or one) realtime values."),
        MiCommand(module, "list", "list_statistics", [[], ["statistics"]], handlers.list,
                  "lists all the registered statistics and their types"),
        MiCommand(module, "reset", "reset_statistics", [["statistics"]], handlers.reset,
                  "resets the value of a statistic variable"),
        MiCommand(module, "reset_all", "reset_all_statistics", [[]], handlers.reset_all,
                  "resets the value of all resetable variables"),
    ]


Stat = Counter | Gauge


def _kind(stat: Stat) -> str:
    return "incremental" if stat.incremental else "non-incremental"


class _StatisticsHandlers:
    """The `statistics:` command handlers, over the service's `Stats`."""

    def __init__(self, stats: Stats):
        self.stats = stats

    def _select(self, items: list[str], allow_all: bool) -> list[Stat]:
        """The statistics the selectors name, in registration order, once."""
        stats = self.stats
        chosen = {}
        for item in items:
            if allow_all and item == "all":
                for stat in stats:
                    chosen[id(stat)] = stat
            elif item.endswith(":"):
                for stat in stats.in_group(item[:-1]):
                    chosen[id(stat)] = stat
            elif ":" not in item:
                for stat in stats.find(item):
                    chosen[id(stat)] = stat
        order = {id(stat): i for i, stat in enumerate(stats)}
        return sorted(chosen.values(), key=lambda s: order.get(id(s), 0))

    def get(self, params: Params) -> dict[str, int]:
        return {f"{s.group}:{s.name}": s.value for s in self._select(params.strings("statistics"), True)}

    def list(self, params: Params) -> dict[str, str]:
        stats = self.stats
        if "statistics" not in params:
            return {f"{s.group}:{s.name}": _kind(s) for s in stats}
        result = {}
        for item in params.strings("statistics"):
            if item.endswith(":"):
                for stat in stats.in_group(item[:-1]):
                    result[f"{stat.group}:{stat.name}"] = _kind(stat)
            elif ":" not in item:
                for stat in stats.find(item):
                    result[stat.name] = _kind(stat)
        return result

    def reset(self, params: Params) -> str:
        found = False
        for item in params.strings("statistics"):
            if ":" in item:
                continue
            for stat in self.stats.find(item):
                found = True
                stat.reset()
        if not found:
            raise STATISTICS_NOT_FOUND
        return "OK"

    def reset_all(self, params: Params) -> str:
        for stat in self.stats:
            stat.reset()
        return "OK"

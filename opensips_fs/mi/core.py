"""The `core:` and `statistics:` MI commands (MI.md §7), with OpenSIPS' shapes.

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
from ..stats import Stats
from .commands import MiCommand, MiError, MiRegistry, Params, invalid_params

__all__ = ["CoreContext", "core_commands", "statistics_commands", "server_string"]

EMULATED_VERSION = "4.1.0-dev"
UNKNOWN_COMMAND = MiError(404, "unknown MI command")
STATISTICS_NOT_FOUND = MiError(404, "Statistics Not Found")
NO_HELP = "not available for this command"
HELP_USAGE = "Usage: help mi_cmd - returns information about 'mi_cmd'"


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
    registry = ctx.registry

    def uptime(params: Params):
        now = time.time()
        return {
            "Now": time.ctime(now),
            "Up since": time.ctime(ctx.started_at),
            "Up time": f"{int(now - ctx.started_at)} [sec]",
        }

    def version(params: Params):
        result = {"Server": server_string()}
        if "revision" in params:
            params.string("revision")
            result["opensips-fs"] = __version__
        return result

    def pwd(params: Params):
        try:
            return {"WD": os.getcwd()}
        except OSError:
            raise MiError(500, "Internal Error") from None

    def arg(params: Params):
        return list(sys.argv)

    def which(params: Params):
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

    def process_rows():
        return list(enumerate(ctx.processes()))

    def ps(params: Params):
        pid = os.getpid()
        return {"Processes": [{"ID": i, "PID": pid, "Type": kind} for i, kind in process_rows()]}

    def kill(params: Params):
        stop = ctx.shutdown or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        _after_reply(stop)
        return "OK"

    def log_level(params: Params):
        if "level" not in params:
            pid = os.getpid()
            level = ctx.get_log_level()
            return {"Processes": [
                {"PID": pid, "Log level": level, "Type": kind} for _, kind in process_rows()
            ]}
        level = params.int("level")
        if "pid" in params:
            if params.int("pid") != os.getpid():
                raise invalid_params("Bad PID")
            ctx.set_log_level(level)
            return {"Log level": level}
        ctx.set_log_level(level)
        return {"New global log level": level}

    def help_(params: Params):
        if "mi_cmd" not in params:
            return HELP_USAGE
        command = registry.resolve(params.string("mi_cmd"))
        if command is None:
            raise UNKNOWN_COMMAND
        return {"Help": command.help or NO_HELP, "Exported by": command.module}

    core = "core"
    return [
        MiCommand(core, "uptime", None, [[]], uptime,
                  "prints various time information about OpenSIPS - when it started to run, for how long it runs"),
        MiCommand(core, "version", None, [[], ["revision"]], version,
                  "prints the version string of a runningOpenSIPS"),
        MiCommand(core, "pwd", None, [[]], pwd, "prints the working directory of OpenSIPS"),
        MiCommand(core, "arg", None, [[]], arg, "returns the full list of arguments used at startup"),
        MiCommand(core, "which", None, [[], ["command"]], which, "lists all available MI commands"),
        MiCommand(core, "ps", None, [[]], ps, "lists all processes used by OpenSIPS"),
        MiCommand(core, "kill", None, [[]], kill, "terminates OpenSIPS"),
        MiCommand(core, "log_level", None, [[], ["level"], ["level", "pid"]], log_level,
                  "gets/sets the per process or global log level in OpenSIPS"),
        MiCommand(core, "help", None, [[], ["mi_cmd"]], help_, "prints information about MI commands usage"),
    ]


def _after_reply(action: Callable[[], None], delay: float = 0.2) -> None:
    """Run `action` shortly, once the reply has had time to leave."""
    try:
        import gevent
    except ImportError:  # pragma: no cover - gevent is a dependency
        action()
        return
    gevent.spawn_later(delay, action)


def statistics_commands(stats: Stats) -> list[MiCommand]:

    def select(items: list[str], allow_all: bool):
        """The statistics the selectors name, in registration order, once."""
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

    def get(params: Params):
        return {f"{s.group}:{s.name}": s.value for s in select(params.strings("statistics"), True)}

    def kind(stat) -> str:
        return "incremental" if stat.incremental else "non-incremental"

    def list_(params: Params):
        if "statistics" not in params:
            return {f"{s.group}:{s.name}": kind(s) for s in stats}
        result = {}
        for item in params.strings("statistics"):
            if item.endswith(":"):
                for stat in stats.in_group(item[:-1]):
                    result[f"{stat.group}:{stat.name}"] = kind(stat)
            elif ":" not in item:
                for stat in stats.find(item):
                    result[stat.name] = kind(stat)
        return result

    def reset(params: Params):
        found = False
        for item in params.strings("statistics"):
            if ":" in item:
                continue
            for stat in stats.find(item):
                found = True
                stat.reset()
        if not found:
            raise STATISTICS_NOT_FOUND
        return "OK"

    def reset_all(params: Params):
        for stat in stats:
            stat.reset()
        return "OK"

    module = "statistics"
    return [
        MiCommand(module, "get", "get_statistics", [["statistics"]], get,
                  "prints the statistics (all, group or one) realtime values."),
        MiCommand(module, "list", "list_statistics", [[], ["statistics"]], list_,
                  "lists all the registered statistics and their types"),
        MiCommand(module, "reset", "reset_statistics", [["statistics"]], reset,
                  "resets the value of a statistic variable"),
        MiCommand(module, "reset_all", "reset_all_statistics", [[]], reset_all,
                  "resets the value of all resetable variables"),
    ]

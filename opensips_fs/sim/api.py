"""The API commands of the simulated FreeSWITCH (``api``/``bgapi`` bodies,
docs/protocols/esl.md §3): canned outputs with FreeSWITCH's exact texts, computed from the
simulator's state (uptime, live channels, hostname).

``execute(box, cmd, arg)`` returns the output string, already normalised the
way mod_event_socket sends it (empty output becomes ``-ERR no reply\\n``).
Commands that start calls go to ``box.calls`` (see ``calls.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from .server import FsSimulator

__all__ = ["execute", "format_uptime", "API_COMMANDS"]

SHOW_USAGE = (
    "-USAGE: codec|endpoint|application|api|dialplan|file|timer|calls [count]|"
    "channels [count|like <match string>]|calls|detailed_calls|bridged_calls|"
    "detailed_bridged_calls|aliases|complete|chat|management|modules|nat_map|say|"
    "interfaces|interface_types|tasks|limits|status\n"
)
ORIGINATE_USAGE = (
    "-USAGE: <call url> <exten>|&<application_name>(<app_args>) [<dialplan>] "
    "[<context>] [<cid_name>] [<cid_num>] [<timeout_sec>]\n"
)

_UNITS = ("year", "day", "hour", "minute", "second", "millisecond", "microsecond")


def format_uptime(micros: int) -> str:
    """``0 years, 0 days, 0 hours, 2 minutes, 38 seconds, …`` (singular for 1)."""
    ms, us = divmod(micros, 1000)
    secs, ms = divmod(ms, 1000)
    mins, secs = divmod(secs, 60)
    hours, mins = divmod(mins, 60)
    days, hours = divmod(hours, 24)
    years, days = divmod(days, 365)
    values = (years, days, hours, mins, secs, ms, us)
    return ", ".join("%d %s%s" % (v, u, "" if v == 1 else "s") for v, u in zip(values, _UNITS))


def _status(box: FsSimulator, arg: str) -> str:
    s = box.session_stats()
    return (
        "UP %s\nFreeSWITCH (Version %s) is ready\n%d session(s) since startup\n"
        "%d session(s) - peak %d, last 5min %d \n"
        "%d session(s) per Sec out of max %d, peak %d, last 5min %d \n"
        "%d session(s) max\nmin idle cpu 0.00/%.2f\nCurrent Stack Size/Max 240K/8192K\n"
    ) % (
        format_uptime(box.uptime_us()), box.identity.fs.human,
        s["since_startup"], s["count"], s["peak"], s["peak_5min"],
        s["per_sec_last"], s["max_per_sec"], s["per_sec_peak"], s["per_sec_5min"],
        s["max_sessions"], box.idle_cpu(),
    )


_UPTIME_UNITS_US = {"us": 1, "ms": 1000, "s": 1_000_000, "m": 60_000_000,
                    "h": 3_600_000_000, "d": 86_400_000_000, "y": 31_536_000_000_000}


def _uptime(box: FsSimulator, arg: str) -> str:
    return "%d\n" % (box.uptime_us() // _UPTIME_UNITS_US.get(arg.strip() or "s", 1_000_000))


def _version(box: FsSimulator, arg: str) -> str:
    if arg.strip() == "short":
        return box.identity.version.split("-")[0] + "\n"
    return box.identity.fs.line + "\n"


def _global_vars(box: FsSimulator) -> dict[str, str | None]:
    ident = box.identity
    return {
        "hostname": ident.hostname,
        "switchname": ident.switchname,
        "local_ip_v4": ident.ipv4,
        "local_ip_v6": ident.ipv6,
        "core_uuid": ident.core_uuid,
        "base_dir": "/usr/local/freeswitch",
        "domain": ident.ipv4,
        "default_password": "1234",
    }


def _global_getvar(box: FsSimulator, arg: str) -> str | None:
    name = arg.strip()
    variables = _global_vars(box)
    if not name:
        return "".join("%s=%s\n" % kv for kv in variables.items())
    return variables.get(name, "")


def _show(box: FsSimulator, arg: str) -> str:
    words = arg.split()
    as_json = len(words) >= 3 and words[-2].lower() == "as" and words[-1].lower() == "json"
    if as_json:
        words = words[:-2]
    if not words or words[0] not in ("calls", "channels", "detailed_calls", "bridged_calls"):
        return SHOW_USAGE
    what = "channels" if words[0] == "channels" else "calls"
    rows = box.calls.show_rows(what)
    if len(words) > 1 and words[1] == "count":
        return "\n%d total.\n" % len(rows)
    if as_json:
        if not rows:
            return '{"row_count": 0}\n'
        return orjson.dumps({"row_count": len(rows), "rows": rows}).decode()
    if not rows:
        return "\n0 total.\n"
    cols = list(rows[0])
    lines = [",".join(cols)] + [",".join(r[c] for c in cols) for r in rows]
    return "\n".join(lines) + "\n\n%d total.\n" % len(rows)


def _originate(box: FsSimulator, arg: str) -> str:
    words = arg.split()
    if len(words) < 2:
        return ORIGINATE_USAGE
    return box.calls.originate(words[0])


def _uuid_kill(box: FsSimulator, arg: str) -> str:
    words = arg.split()
    if not words:
        return "-USAGE: <uuid> [cause]\n"
    cause = words[1] if len(words) > 1 else "NORMAL_CLEARING"
    if box.calls.kill(words[0], cause):
        return "+OK\n"
    return "-ERR No such channel!\n"


def _hupall(box: FsSimulator, arg: str) -> str:
    words = arg.split()
    cause = words[0] if words else "MANAGER_REQUEST"
    box.calls.hupall(cause)
    return "+OK hangup all channels with cause %s\n" % cause


def _fsctl(box: FsSimulator, arg: str) -> str:
    words = arg.split()
    if not words:
        return "-ERR Invalid command\n"
    if words[0] in ("shutdown", "shutdown_elegant", "shutdown_asap"):
        box.schedule_shutdown()
        return "+OK\n"
    if words[0] == "hupall":
        return _hupall(box, " ".join(words[1:]))
    return "+OK\n"


def _log(box: FsSimulator, arg: str) -> str:
    level, _, text = arg.strip().partition(" ")
    if not level:
        return "-ERR no log level specified\n"
    box.log_line(level, text)
    return "+OK\n"


# name -> handler(box, argument) -> output (None or "": no reply)
API_COMMANDS: dict[str, Callable[[FsSimulator, str], str | None]] = {
    "status": _status,
    "uptime": _uptime,
    "version": _version,
    "hostname": lambda box, arg: box.identity.hostname,
    "echo": lambda box, arg: arg,
    "global_getvar": _global_getvar,
    "show": _show,
    "originate": _originate,
    "uuid_kill": _uuid_kill,
    "hupall": _hupall,
    "fsctl": _fsctl,
    "create_uuid": lambda box, arg: box.new_uuid(),
    "log": _log,
}


def execute(box: FsSimulator, cmd: str, arg: str) -> str:
    """Run one API command; the reply body exactly as FreeSWITCH sends it."""
    func = API_COMMANDS.get(cmd)
    if func is None:
        return "-ERR %s Command not found!\n" % cmd
    return func(box, arg) or "-ERR no reply\n"

"""The command registry and the core/statistics commands, through
`MiRegistry.handle` (the pipeline every transport shares)."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from opensips_fs import __version__
from opensips_fs.mi.commands import MiCommand, MiError, Params
from opensips_fs.mi.registry import MiRegistry
from opensips_fs.stats import Stats
from support.mi import PROCESSES, build_registry
from support.waits import wait_until


def call(registry, method, params=None, request_id=1):
    request = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        request["params"] = params
    if request_id is not None:
        request["id"] = request_id
    reply = registry.handle(json.dumps(request).encode())
    return None if reply is None else json.loads(reply)


def error_of(reply):
    return reply["error"]


@pytest.fixture
def registry():
    return build_registry()


# -- names -------------------------------------------------------------------------

def test_which_lists_flat_then_canonical(registry):
    names = call(registry, "which")["result"]
    assert names[:4] == ["get_statistics", "list_statistics", "reset_statistics", "reset_all_statistics"]
    assert names.index("fs_list") < names.index("statistics:get")
    assert names[-1] == "freeswitch_scripting:status"
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", ["fs_list", "freeswitch_scripting:list", "reload", "which", "core:which",
                                  "get", "reset", "reset_all", "subscribers", "raise", "unsubscribe", "esl", "status"])
def test_names_that_resolve(registry, name):
    assert registry.resolve(name) is not None


@pytest.mark.parametrize("name", ["FS_LIST", "fs_list ", "freeswitch_scripting:", ":list", "freeswitch:list",
                                  "freeswitch_scripting:fs_list", "nope", ""])
def test_method_not_found_has_no_data(registry, name):
    assert error_of(call(registry, name)) == {"code": -32601, "message": "Method not found"}


def test_ambiguous_names(registry):
    assert error_of(call(registry, "list", ["bad", "params"])) == {
        "code": -32001, "message": "Method ambiguous",
        "data": "supported names: statistics:list, evi:list, freeswitch_scripting:list"}
    assert error_of(call(registry, "subscribe"))["data"] == \
        "supported names: evi:subscribe, freeswitch_scripting:subscribe"


def test_alias_of_two_commands_is_ambiguous():
    registry = MiRegistry(Stats())
    registry.register([MiCommand("a", "x", "dup", [[]], lambda p: "A"),
                       MiCommand("b", "y", "dup", [[]], lambda p: "B")])
    assert error_of(call(registry, "dup"))["data"] == "supported names: a:x, b:y"


def test_register_twice_refused(registry):
    with pytest.raises(ValueError):
        registry.register([MiCommand("core", "which", None, [[]], lambda p: "x")])


# -- recipes (docs/protocols/mi.md §4) ----------------------------------------------------------------

TOO = "Too few or too many parameters"


@pytest.mark.parametrize("method, params, data", [
    ("fs_list", ["x"], TOO),
    ("fs_list", {"x": 1}, TOO),
    ("fs_subscribe", None, TOO),
    ("fs_subscribe", {}, TOO),
    ("fs_subscribe", [], TOO),
    ("fs_subscribe", {"freeswitch_url": "u"}, TOO),
    ("fs_subscribe", {"url": "u", "event": ["A"]}, "Named parameters do not match"),
    ("fs_subscribe", {"freeswitch_url": "u", "events": ["A"], "x": 1}, TOO),
    ("fs_subscribe", ["u", "A", "B"], TOO),
    ("kill", {"bogus": 1}, TOO),
    ("event_subscribe", {"event": "E_FREESWITCH"}, TOO),
    ("get_statistics", None, TOO),
    ("get_statistics", "x" and {"Statistics": ["all"]}, "Named parameters do not match"),
])
def test_recipe_errors(registry, method, params, data):
    assert error_of(call(registry, method, params)) == {"code": -32602, "message": "Invalid params", "data": data}


def test_duplicate_named_params_count_on_the_wire(registry):
    body = b'{"jsonrpc":"2.0","method":"which","params":{"command":"ps","command":"x"},"id":1}'
    assert json.loads(registry.handle(body))["error"]["data"] == TOO


def test_equal_size_recipes_ambiguous_positional():
    registry = MiRegistry(Stats())
    registry.register([MiCommand("t", "two", None, [["a"], ["b"]], lambda p: "OK")])
    assert error_of(call(registry, "two", [1]))["data"] == "Ambiguous call, use named parameters instead"
    assert call(registry, "two", {"b": 1})["result"] == "OK"


@pytest.mark.parametrize("value, data", [
    ("all", "Bad type for parameter 'statistics'"),
    (None, "Bad type for parameter 'statistics'"),
    ([], "Empty array in parameter 'statistics'"),
    ([["x"]], "Bad type for array item in parameter 'statistics'"),
    ([True], "Bad type for array item in parameter 'statistics'"),
])
def test_array_param_typing(registry, value, data):
    assert error_of(call(registry, "get_statistics", [value]))["data"] == data


@pytest.mark.parametrize("level, expected", [
    ("4", 4), (2, 2), ("-1", -1), ("+3", 3), (3.7, 3),
])
def test_int_params_accept_numeric_strings(registry, level, expected):
    assert call(registry, "log_level", [level])["result"] == {"New global log level": expected}
    assert registry.log_level.level == expected


def test_int_params_saturate_numbers_to_32_bits():
    # log_level refuses such levels (out of range): the typing itself saturates
    assert Params({"n": 99999999999}).int("n") == 2147483647
    assert Params({"n": -99999999999.5}).int("n") == -2147483648


@pytest.mark.parametrize("level", ["abc", "", "3.0", " 5", None, True, [], {}, "99999999999"])
def test_int_params_refuse_other_values(registry, level):
    assert error_of(call(registry, "log_level", {"level": level}))["data"] == "Bad type for parameter 'level'"
    assert registry.log_level.level == 3


def test_handler_failures_are_server_errors():
    stats = Stats()
    registry = MiRegistry(stats)

    def boom(params):
        raise RuntimeError("bug")

    registry.register([MiCommand("t", "boom", None, [[]], boom), MiCommand("t", "null", None, [[]], lambda p: None),
                       MiCommand("t", "err", None, [[]], lambda p: (_ for _ in ()).throw(MiError(480, "Busy")))])
    expected = {"code": -32000, "message": "Server error", "data": "Command handler returned null"}
    assert error_of(call(registry, "boom")) == expected
    assert error_of(call(registry, "null")) == expected
    assert error_of(call(registry, "err")) == {"code": 480, "message": "Busy"}
    assert stats.counter("mi", "handler_failures").value == 1


def test_notification_runs_but_answers_nothing(registry):
    assert call(registry, "log_level", [1], request_id=None) is None
    assert registry.log_level.level == 1
    assert call(registry, "nope", request_id=None) is None
    assert registry.handle(b'{"jsonrpc":"1.0","method":"x"}') == \
        b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}'


# -- core commands -------------------------------------------------------------------------

def test_which_with_command(registry):
    assert call(registry, "which", ["fs_list"])["result"] == [[]]
    assert call(registry, "which", {"command": "fs_subscribe"})["result"] == [["freeswitch_url", "events"]]
    assert call(registry, "which", ["event_subscribe"])["result"] == [["event", "socket"],
                                                                      ["event", "socket", "expire"]]
    assert call(registry, "which", ["subscribers_list"])["result"] == [[], ["event"], ["event", "socket"]]
    assert call(registry, "which", ["freeswitch_scripting:"])["result"] == [
        "freeswitch_scripting:subscribe", "freeswitch_scripting:unsubscribe", "freeswitch_scripting:list",
        "freeswitch_scripting:reload", "freeswitch_scripting:esl", "freeswitch_scripting:status"]
    for unknown in ("nope", "list", "nomodule:"):
        assert error_of(call(registry, "which", [unknown])) == {"code": 404, "message": "unknown MI command"}


def test_version(registry):
    machine = os.uname().machine.lower()
    assert call(registry, "version")["result"] == {
        "Server": f"OpenSIPS (4.1.0-dev ({machine}/linux))", "opensips-fs": __version__}
    assert re.match(r"OpenSIPS \((\d+)\.(\d+)\.(\d+)", call(registry, "version")["result"]["Server"])
    assert call(registry, "version", ["x"])["result"] == {
        "Server": f"OpenSIPS (4.1.0-dev ({machine}/linux))", "opensips-fs": __version__}


def test_uptime():
    started = time.time() - 125
    registry = build_registry(started_at=started)
    result = call(registry, "uptime")["result"]
    assert list(result) == ["Now", "Up since", "Up time"]
    assert result["Up since"] == time.ctime(started)
    assert result["Up time"] in ("125 [sec]", "126 [sec]")
    assert re.fullmatch(r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}", result["Now"])


def test_help(registry):
    assert call(registry, "help")["result"] == "Usage: help mi_cmd - returns information about 'mi_cmd'"
    assert call(registry, "help", ["get_statistics"])["result"] == {
        "Help": "prints the statistics (all, group or one) realtime values.", "Exported by": "statistics"}
    assert call(registry, "help", ["version"])["result"] == {
        "Help": "prints the version string of a runningOpenSIPS", "Exported by": "core"}
    assert call(registry, "help", ["freeswitch_scripting:reload"])["result"] == {
        "Help": "not available for this command", "Exported by": "freeswitch_scripting"}
    assert error_of(call(registry, "help", ["list"])) == {"code": 404, "message": "unknown MI command"}


def test_ps_and_log_level(registry):
    pid = os.getpid()
    assert call(registry, "ps")["result"] == {
        "Processes": [{"ID": i, "PID": pid, "Type": t} for i, t in enumerate(PROCESSES)]}
    assert call(registry, "log_level")["result"] == {
        "Processes": [{"PID": pid, "Log level": 3, "Type": t} for t in PROCESSES]}
    assert call(registry, "log_level", [4, pid])["result"] == {"Log level": 4}
    assert registry.log_level.level == 4
    assert error_of(call(registry, "log_level", [2, pid + 100000])) == {
        "code": -32602, "message": "Invalid params", "data": "Bad PID"}
    assert registry.log_level.level == 4


def test_log_level_really_changes_python_logging():
    import logging
    from opensips_fs import logs
    from opensips_fs.mi.core import CoreContext, core_commands
    stats = Stats()
    registry = MiRegistry(stats)
    before = logs.get_level()
    registry.register(core_commands(CoreContext(time.time(), stats, lambda: ["attendant"],
                                                logs.get_level, logs.set_level, registry)))
    try:
        call(registry, "log_level", ["4"])
        assert logs.get_level() == 4
        assert logging.getLogger("opensips_fs").isEnabledFor(logging.DEBUG)
        call(registry, "log_level", [-1])
        assert not logging.getLogger("opensips_fs").isEnabledFor(logging.WARNING)
    finally:
        logs.set_level(before)


def test_kill_calls_shutdown_after_reply():
    from opensips_fs.mi.core import CoreContext, core_commands
    stats = Stats()
    registry = MiRegistry(stats)
    stopped = []
    registry.register(core_commands(CoreContext(time.time(), stats, lambda: [], lambda: 3, lambda level: None,
                                                registry, shutdown=lambda: stopped.append(True))))
    assert call(registry, "kill")["result"] == "OK"
    assert stopped == []  # not before the reply has had time to leave
    wait_until(lambda: stopped, timeout=2, what="the shutdown after kill")
    assert stopped == [True]


# -- statistics -------------------------------------------------------------------------

@pytest.fixture
def stats_registry():
    stats = Stats()
    registry = MiRegistry(stats)
    from opensips_fs.mi.core import statistics_commands
    registry.register(statistics_commands(stats))
    stats.counter("freeswitch", "events_received").value = 5
    stats.counter("freeswitch", "reconnects").value = 2
    stats.gauge("freeswitch", "sockets", lambda: 3)
    stats.counter("evi", "events_received").value = 7
    stats.counter("evi", "dropped").value = 1
    return stats, registry


def test_get_statistics(stats_registry):
    stats, registry = stats_registry
    all_stats = call(registry, "get_statistics", [["all"]])["result"]
    assert list(all_stats)[:5] == ["mi:requests", "mi:error_replies", "mi:parse_errors", "mi:invalid_requests",
                                   "mi:notifications"]
    assert all_stats["freeswitch:sockets"] == 3
    assert call(registry, "get_statistics", [["freeswitch:"]])["result"] == {
        "freeswitch:events_received": 5, "freeswitch:reconnects": 2, "freeswitch:sockets": 3}
    assert call(registry, "get_statistics", [["events_received"]])["result"] == {
        "freeswitch:events_received": 5, "evi:events_received": 7}
    assert call(registry, "get_statistics", [["dropped", "evi:", "dropped"]])["result"] == {
        "evi:events_received": 7, "evi:dropped": 1}
    assert call(registry, "get_statistics", [["evi:dropped", "nothing"]])["result"] == {}


def test_list_statistics(stats_registry):
    stats, registry = stats_registry
    listed = call(registry, "list_statistics")["result"]
    assert listed["freeswitch:events_received"] == "incremental"
    assert listed["freeswitch:sockets"] == "non-incremental"
    assert call(registry, "list_statistics", [["sockets", "evi:"]])["result"] == {
        "sockets": "non-incremental", "evi:events_received": "incremental", "evi:dropped": "incremental"}
    assert call(registry, "list_statistics", [["all"]])["result"] == {}


def test_reset_statistics(stats_registry):
    stats, registry = stats_registry
    assert call(registry, "reset_statistics", [["reconnects", "sockets"]])["result"] == "OK"
    assert stats.counter("freeswitch", "reconnects").value == 0
    assert stats.counter("freeswitch", "events_received").value == 5
    assert error_of(call(registry, "reset_statistics", [["freeswitch:reconnects", "none"]])) == {
        "code": 404, "message": "Statistics Not Found"}
    assert call(registry, "reset_all_statistics")["result"] == "OK"
    assert stats.counter("evi", "events_received").value == 0
    assert call(registry, "get_statistics", [["sockets"]])["result"] == {"freeswitch:sockets": 3}

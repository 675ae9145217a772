"""freeswitch_scripting behaviour beyond the transcripts, through MI over
HTTP against simulators: rejected calls change nothing, credential rules,
freeswitch_esl (forms, errors, concurrency), fs_status, E_FREESWITCH
delivery, modparams, and the real opensips-cli."""

from __future__ import annotations

import configparser
import json
import socket
import subprocess
import sys
from pathlib import Path

import gevent
import pytest

from opensips_fs.esl.manager import TICK
from support.stack import Stack, error, result, stack_factory, url
from support.waits import assert_never, wait_until

CLI = Path(sys.executable).parent / "opensips-cli"


@pytest.fixture
def stack(tmp_path):
    yield from stack_factory(tmp_path)


def sockets(s: Stack) -> list:
    return result(s.mi("fs_list"))["Sockets"]


# ------------------------------------------------------- rejected calls

@pytest.mark.timeout(20)
@pytest.mark.parametrize("events, data", [
    ([], "Empty array in parameter 'events'"),
    ("DTMF", "Bad type for parameter 'events'"),
    (["DTMF", None], "Bad type for array item in parameter 'events'"),
    (["DTMF", {"a": 1}], "Bad type for array item in parameter 'events'"),
])
def test_a_rejected_subscribe_creates_nothing(stack, events, data):
    s = stack()
    new = url(s, 8021)
    assert error(s.mi("fs_subscribe", {"freeswitch_url": new, "events": events})) == {
        "code": -32602, "message": "Invalid params", "data": data}
    assert sockets(s) == []
    assert s.app.manager.find("127.0.0.1", s.port_map[8021]) is None
    # the manager connects at once, or retries on its TICK: never within one
    assert_never(lambda: s.sims[8021].clients, during=TICK, what="a connection")


@pytest.mark.timeout(20)
def test_a_rejected_subscribe_on_a_known_socket_changes_nothing(stack):
    s = stack()
    assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8021, "admin:ClueCon@"),
                                        "events": ["DTMF"]})) == "OK"
    sock = s.app.manager.find("127.0.0.1", s.port_map[8021])
    # positional [url, "A"]: OpenSIPS reads the URL (and its credentials) first
    assert error(s.mi("fs_subscribe", [url(s, 8021, "other:pw@"), "TALK"]))["data"] == \
        "Bad type for parameter 'events'"
    assert error(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8021, "other:pw@"),
                                       "events": ["TALK", True]}))["code"] == -32602
    assert sock.username == "admin"
    assert sockets(s) == [{"if": "127.0.0.1:8021", "Events": ["DTMF"]}]


@pytest.mark.timeout(20)
def test_an_event_name_on_several_lines_is_refused(stack):
    s = stack()
    assert error(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8021),
                                       "events": ["DTMF", "TALK\n\napi status"]})) == {
        "code": 400, "message": "Bad event name"}
    assert sockets(s) == [] and s.app.manager.find("127.0.0.1", s.port_map[8021]) is None


@pytest.mark.timeout(20)
def test_unsubscribe_never_creates_a_socket(stack):
    s = stack()
    assert result(s.mi("fs_unsubscribe", {"freeswitch_url": url(s, 8021),
                                          "events": ["DTMF"]})) == "OK"
    # [OS] no entry for the socket: OK before the events are even read
    assert result(s.mi("fs_unsubscribe", {"freeswitch_url": url(s, 8021), "events": 5})) == "OK"
    assert s.app.manager.find("127.0.0.1", s.port_map[8021]) is None
    assert error(s.mi("fs_unsubscribe", {"freeswitch_url": url(s, 8021, ""),
                                         "events": ["DTMF"]})) == {
        "code": 500, "message": "Internal Error"}


@pytest.mark.timeout(20)
def test_subscribe_with_only_empty_names_makes_an_empty_entry(stack):
    s = stack()
    assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8021), "events": [""]})) == "OK"
    assert sockets(s) == [{"if": "127.0.0.1:8021", "Events": []}]
    s.sims[8021].wait_clients(1)
    assert s.commands(8021, 1) == ["auth ClueCon"]
    # removed by any unsubscribe naming a non-empty event
    assert result(s.mi("fs_unsubscribe", {"freeswitch_url": url(s, 8021),
                                          "events": ["X"]})) == "OK"
    assert sockets(s) == []
    s.wait_closed(8021, 1)


# ---------------------------------------------------------- credentials

@pytest.mark.timeout(20)
def test_later_urls_update_the_credentials_of_mi_sockets(stack):
    s = stack()
    box = s.sims[8021]
    assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8021),
                                        "events": ["DTMF"]})) == "OK"
    box.wait_clients(1)
    sock = s.app.manager.find("127.0.0.1", s.port_map[8021])
    # no userinfo: username cleared (was none), password kept
    assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8021, ""),
                                        "events": ["TALK"]})) == "OK"
    assert sock.username is None
    # a new password: used at the next connection
    box.set_password("Changed")
    assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8021, ":Changed@"),
                                        "events": ["NOTALK"]})) == "OK"
    box.drop(notice=True)
    with gevent.Timeout(5):
        while len(box.clients) < 2 or not box.clients[1].authed:
            gevent.sleep(0.02)
    s.wait_commands(8021, 2, ["auth Changed", "event json DTMF", "event json TALK",
                              "event json NOTALK"])
    # freeswitch_esl URLs update them too (username set now)
    assert result(s.mi("freeswitch_esl", ["api echo hi", url(s, 8021, "bob:Changed@")])) == "hi"
    assert sock.username == "bob"
    assert "Changed" not in json.dumps(result(s.mi("fs_status")))


# -------------------------------------------------------- freeswitch_esl

@pytest.mark.timeout(20)
def test_freeswitch_esl_named_and_positional_forms(stack):
    s = stack()
    u = url(s, 8021)
    assert result(s.mi("freeswitch_esl", {"command": "api echo named", "freeswitch_url": u})) \
        == "named"
    assert result(s.mi("freeswitch_esl", ["api echo positional", u])) == "positional"
    assert result(s.mi("freeswitch_scripting:esl", ["api echo canonical\n", u])) == "canonical"
    assert result(s.mi("esl", ["api echo local\n\n", u])) == "local"
    assert error(s.mi("freeswitch_esl", [u, "api echo swapped"])) == {
        "code": 500, "message": "Internal Error"}  # "api echo swapped" is not a URL
    assert error(s.mi("freeswitch_esl", {"command": None, "freeswitch_url": u}))["data"] == \
        "Bad type for parameter 'command'"
    assert error(s.mi("freeswitch_esl", ["api status"]))["data"] == \
        "Too few or too many parameters"
    assert sockets(s) == []  # sockets used by freeswitch_esl are not listed
    assert [x["if"] for x in result(s.mi("fs_status"))["Sockets"]] == ["127.0.0.1:8021"]


@pytest.mark.timeout(20)
def test_freeswitch_esl_command_errors_send_nothing(stack):
    s = stack()
    u = url(s, 8021)
    assert result(s.mi("freeswitch_esl", ["api echo warm", u])) == "warm"
    cases = [
        ("", {"code": 400, "message": "Empty ESL command"}),
        ("\r\n", {"code": 400, "message": "Empty ESL command"}),
        ("api status\n\nnixevent all", {"code": 400, "message": "Bad ESL command"}),
        ("api status\n\r\napi version", {"code": 400, "message": "Bad ESL command"}),
        ("api echo " + "x" * 70000, {"code": 400, "message": "ESL command too long"}),
    ]
    for command, expected in cases:
        assert error(s.mi("freeswitch_esl", [command, u])) == expected
    # a refused command does not create a socket either
    assert error(s.mi("freeswitch_esl", ["", url(s, 8022)]))["code"] == 400
    assert s.app.manager.find("127.0.0.1", s.port_map[8022]) is None
    assert error(s.mi("freeswitch_esl", ["api status", url(s, 8022, "")])) == {
        "code": 500, "message": "Internal Error"}
    assert_never(lambda: len(s.commands(8021, 1)) > 2, during=TICK, what="a refused command on the wire")
    assert s.commands(8021, 1) == ["auth ClueCon", "api echo warm"]


@pytest.mark.timeout(20)
def test_freeswitch_esl_header_lines_are_passed_through(stack):
    s = stack()
    u = url(s, 8021)
    assert result(s.mi("freeswitch_esl", [
        "bgapi originate {origination_uuid=123}user/1010 9386\njob-uuid: foobar\n", u])) == \
        "+OK Job-UUID: foobar"
    assert s.commands(8021, 1)[-1] == \
        "bgapi originate {origination_uuid=123}user/1010 9386\njob-uuid: foobar"


@pytest.mark.timeout(20)
def test_freeswitch_esl_not_connected(stack):
    s = stack()
    u = url(s, 8021)
    assert result(s.mi("freeswitch_esl", ["api echo up", u])) == "up"
    s.sims[8021].stop()
    esl = s.app.manager.find("127.0.0.1", s.port_map[8021])
    wait_until(lambda: not esl.connected, what="the loss seen")
    assert error(s.mi("freeswitch_esl", ["api echo down", u])) == {
        "code": 503, "message": "FreeSWITCH not connected"}


@pytest.mark.timeout(30)
def test_concurrent_freeswitch_esl_calls_each_get_their_own_reply(stack):
    s = stack()
    urls = [url(s, 8021), url(s, 8022)]
    for u in urls:
        assert result(s.mi("freeswitch_esl", ["api echo warm", u])) == "warm"
    s.sims[8021].delay(30)  # replies of 8021 are slow; 8022 must not wait for them
    finished = []

    def call(n):
        reply = s.mi("freeswitch_esl", [f"api echo reply-{n}", urls[n % 2]], id_=n)
        finished.append(n)
        return n, reply

    jobs = [gevent.spawn(call, n) for n in range(60)]
    gevent.joinall(jobs, timeout=20, raise_error=True)
    for job in jobs:
        n, reply = job.get()
        assert reply == {"jsonrpc": "2.0", "result": f"reply-{n}", "id": n}
    # every call on the fast socket was answered before the slow socket's queue drained
    last_slow = max(i for i, n in enumerate(finished) if n % 2 == 0)
    assert all(i < last_slow for i, n in enumerate(finished) if n % 2 == 1)


# --------------------------------------------------------------- fs_status

@pytest.mark.timeout(20)
def test_fs_status(stack):
    s = stack()
    empty = result(s.mi("fs_status"))
    assert list(empty) == ["Sockets", "Database"] and empty["Sockets"] == []
    assert empty["Database"]["loaded"] is True and empty["Database"]["last_error"] is None
    assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8021, "admin:ClueCon@"),
                                        "events": ["DTMF"]})) == "OK"
    s.sims[8021].wait_clients(0)
    one = result(s.mi("fs_status", [url(s, 8021, "")]))["Sockets"]
    assert [x["if"] for x in one] == ["127.0.0.1:8021"] and one[0]["refs"] == 1
    assert list(one[0])[:8] == ["if", "state", "refs", "events", "pending", "attempts",
                                "last_error", "connected_since"]
    assert "ClueCon" not in json.dumps(one) and "admin" not in json.dumps(one)
    assert result(s.mi("freeswitch_scripting:status", {})) == result(s.mi("fs_status"))
    assert error(s.mi("fs_status", [url(s, 8022, "")])) == {"code": 404,
                                                            "message": "Socket not found"}
    assert s.app.manager.find("127.0.0.1", s.port_map[8022]) is None
    assert error(s.mi("fs_status", ["::"])) == {"code": 500, "message": "Internal Error"}


# ------------------------------------------------------------------ reload

@pytest.mark.timeout(20)
def test_reload_without_db_url(stack):
    s = stack(db_params="")
    assert error(s.mi("fs_reload")) == {"code": -32000, "message": "Server error",
                                        "data": "Command handler returned null"}


@pytest.mark.timeout(20)
def test_embedded_sqlite_db_is_created_on_first_start(stack, tmp_path):
    path = tmp_path / "state" / "fs.sqlite"
    s = stack(db_params=f'modparam("freeswitch_scripting", "db_url", "sqlite://{path}")')
    assert path.exists()
    assert result(s.mi("fs_reload")) == "OK"
    assert sockets(s) == []


@pytest.mark.timeout(20)
def test_reload_skips_bad_rows_and_loads_the_rest(stack, caplog):
    s = stack(db_rows=[])
    s.write_db([
        {"id": 1, "username": None, "password": "ClueCon", "ip": "127.0.0.1", "port": 8021,
         "events_csv": "DTMF"},
        {"id": 2, "username": None, "password": "", "ip": "127.0.0.1", "port": 8022,
         "events_csv": "TALK"},
        {"id": 3, "username": None, "password": "ClueCon", "ip": "127.0.0.1", "port": 8022,
         "events_csv": " , "},
        {"id": 4, "username": None, "password": "ClueCon", "ip": "127.0.0.1", "port": 8022,
         "events_csv": "TALK,,NOTALK"},
    ])
    assert result(s.mi("fs_reload")) == "OK"
    assert sockets(s) == [{"if": "127.0.0.1:8022", "Events": ["TALK", "NOTALK"]},
                          {"if": "127.0.0.1:8021", "Events": ["DTMF"]}]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
                and r.name == "opensips_fs.scripting"]
    assert any("row id 2" in w and "password cannot be empty" in w for w in warnings)
    assert any("row id 3" in w and "no event name" in w for w in warnings)
    assert "ClueCon" not in " ".join(warnings)
    stats = result(s.mi("get_statistics", [["freeswitch_scripting:"]]))
    assert stats["freeswitch_scripting:db_rows_skipped"] == 2


@pytest.mark.timeout(20)
def test_modparam_without_events_and_reload_drops_modparams(stack):
    s = stack(modparams='modparam("freeswitch_scripting", "fs_subscribe", '
                        '":ClueCon@127.0.0.1:8021")\n'
                        'modparam("freeswitch_scripting", "fs_subscribe", '
                        '":ClueCon@127.0.0.1:8022?DTMF=1,,TALK")', db_rows=[])
    assert sockets(s) == [{"if": "127.0.0.1:8022", "Events": ["TALK", "DTMF"]},
                          {"if": "127.0.0.1:8021", "Events": []}]
    s.wait_commands(8021, 1, ["auth ClueCon"])
    s.wait_commands(8022, 1, ["auth ClueCon", "event json DTMF", "event json TALK"])
    assert result(s.mi("fs_reload")) == "OK"
    assert sockets(s) == []
    s.wait_closed(8021, 1)
    s.wait_closed(8022, 1)


# ------------------------------------------------------------ E_FREESWITCH

@pytest.mark.timeout(20)
def test_subscribed_events_reach_evi_subscribers_with_the_host_string(stack):
    s = stack(extra='loadmodule "event_datagram.so"')
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(5)
    try:
        sink_url = f"udp:127.0.0.1:{sink.getsockname()[1]}"
        assert result(s.mi("event_subscribe", ["E_FREESWITCH", sink_url])) == "OK"
        # `dtmf`: FreeSWITCH matches names case-insensitively, so do we [EMU]
        assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8021),
                                            "events": ["dtmf"]})) == "OK"
        s.wait_commands(8021, 1, ["auth ClueCon", "event json dtmf"])
        box = s.sims[8021]
        box.push_event('{"Event-Name":"CHANNEL_HANGUP","x":"1"}')  # not subscribed: dropped
        box.push_event('{"Event-Name":"DTMF","DTMF-Digit":"5"}')
        data, _ = sink.recvfrom(65536)
        assert json.loads(data) == {"jsonrpc": "2.0", "method": "E_FREESWITCH", "params": {
            "name": "DTMF", "sender": "127.0.0.1",
            "body": '{"Event-Name":"DTMF","DTMF-Digit":"5"}'}}
    finally:
        sink.close()


# ------------------------------------------------------------- opensips-cli

def cli(s: Stack, tmp_path: Path, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`opensips-cli -x mi ARGS`, or the interactive shell reading `stdin`."""
    cfg = configparser.ConfigParser()
    cfg["default"] = {"communication_type": "http",
                      "url": f"http://127.0.0.1:{s.http_port}/mi", "log_level": "WARNING",
                      "prompt_name": "opensips-cli", "prompt_intro": "",
                      "prompt_emptyline_repeat_cmd": "False", "history_file": str(
                          tmp_path / "cli_history"), "history_file_size": "100",
                      "output_type": "pretty-print"}
    path = tmp_path / "opensips-cli.cfg"
    with open(path, "w") as f:
        cfg.write(f)
    command = [str(CLI), "-f", str(path)] + (["-x", "mi", *args] if stdin is None else [])
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=30)


@pytest.mark.timeout(90)
def test_opensips_cli(stack, tmp_path):
    if not CLI.exists():
        pytest.fail(f"{CLI} missing: the test extra installs opensips-cli")
    s = stack(db_rows=[])
    u = url(s, 8021)
    # one-shot `-x` runs: array grouping of positional events, a string result, an error
    run = cli(s, tmp_path, "fs_subscribe", u, "CHANNEL_STATE", "DTMF")
    assert (run.returncode, json.loads(run.stdout)) == (0, "OK"), run.stderr
    run = cli(s, tmp_path, "freeswitch_esl", "api echo from cli", u)
    assert (run.returncode, json.loads(run.stdout)) == (0, "from cli"), run.stderr
    run = cli(s, tmp_path, "fs_subscribe", "127.0.0.1:1", "DTMF")
    assert run.returncode == 255 and "500: Internal Error" in run.stderr
    # the rest in one interactive session (each command's output after a prompt)
    lines = [f"freeswitch_scripting:subscribe freeswitch_url={u} 'events=TALK NOTALK'",
             "fs_list",
             f"fs_unsubscribe {u} DTMF",
             f"freeswitch_esl 'command=api echo named' freeswitch_url={u}",
             f"fs_status {u}",
             f"freeswitch_esl '' {u}",
             "fs_reload",
             "fs_list"]
    run = cli(s, tmp_path, stdin="".join(f"mi {line}\n" for line in lines))
    out = [o.strip() for o in run.stdout.split("(opensips-cli): ")[1:len(lines) + 1]]
    assert json.loads(out[0]) == "OK"
    assert json.loads(out[1]) == {"Sockets": [{
        "if": f"127.0.0.1:{s.port_map[8021]}",
        "Events": ["NOTALK", "TALK", "DTMF", "CHANNEL_STATE"]}]}
    assert json.loads(out[2]) == "OK"
    assert json.loads(out[3]) == "named"
    assert json.loads(out[4])["Sockets"][0]["refs"] == 1
    assert out[5] == "" and "400: Empty ESL command" in run.stderr
    assert json.loads(out[6]) == "OK"
    assert json.loads(out[7]) == {"Sockets": []}
    s.wait_commands(8021, 1, ["auth ClueCon", "event json CHANNEL_STATE", "event json DTMF",
                              "api echo from cli", "event json TALK", "event json NOTALK",
                              "nixevent DTMF", "api echo named", "nixevent CHANNEL_STATE",
                              "nixevent TALK", "nixevent NOTALK"])

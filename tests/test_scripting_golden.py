"""Replay of the OpenSIPS `mi_fs_*`, `db_*`, `startup_*`, `auth_*` and `esl_*`
transcripts against opensips-fs (in-process `App` from a config, MI over HTTP)
backed by `opensips-fs-sim` FreeSWITCH simulators.

Each test replays one recorded OpenSIPS run ("phase") in order on a fresh
service: the exact recorded HTTP requests go in (ports rewritten to the
simulators' ephemeral ports, Content-Length recomputed) and the replies must
be the recorded ones (status and body bytes, ports rewritten back); the ESL
commands each simulator received must be the recorded ones (the recorded
`esl_wire` rx bytes, cut into commands by the simulator's own parser), per
connection and in order.

Deliberate differences, each applied explicitly below with its reason:

* [EMU] a rejected fs_subscribe leaves no half-made entry behind
  (OpenSIPS lists `{"if":…,"Events":[]}` after `events: []` or a string
  `events`): such entries are dropped from the recorded fs_list replies.
* [EMU] subscriptions go on the wire at once, not at OpenSIPS' next 1 s
  tick; where the tick fell after a recording window the command is expected
  in the scenario that caused it.
* freeswitch_esl is an MI command here (docs/protocols/scripting.md §7.2): the `esl_*` scenarios'
  script-route calls are replayed as MI `freeswitch_esl` calls; the wire must
  match, the results follow §7.2 (api body instead of "").
"""

from __future__ import annotations

import json
import re

import gevent
import pytest

from opensips_fs.sim import SimUser
from opensips_fs.sim.commands import Command, CommandParser
from support import golden
from support.stack import Stack


def load(name: str) -> dict:
    return golden.load("opensips", f"{name}.json")


def http_exchanges(scenario: dict) -> list[dict]:
    return [e for e in scenario["exchanges"] if e["transport"] == "http"]


def golden_commands(scenario: dict) -> dict[tuple[int, int], list[str]]:
    """(port, conn) -> the commands OpenSIPS sent, as FreeSWITCH reads them."""
    streams: dict[tuple[int, int], bytes] = {}
    for w in scenario.get("esl_wire", []):
        if w["dir"] == "rx":
            key = (w["esl_port"], w["conn"])
            streams[key] = streams.get(key, b"") + w["data"].encode("latin-1")
    return {key: [c.text for c in CommandParser().feed(data) if isinstance(c, Command)]
            for key, data in streams.items()}


@pytest.fixture(params=["http", "cli"])
def stacks(request, tmp_path):
    """Stacks driven over HTTP with the recorded bytes, or through the real
    opensips-cli wherever it can express the request."""
    golden.golden_dir("opensips")  # every phase replays recordings: skip (or fail in CI) before any stack
    made = []

    def make(**kwargs):
        stack = Stack(tmp_path, transport=request.param, **kwargs)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.stop()
    if request.param == "cli":
        calls = sum(stack.cli.calls for stack in made if stack.cli is not None)
        assert calls > 0, "nothing went through opensips-cli"


def no_half_made_entries(body: str) -> str:
    """[EMU] a rejected call leaves nothing: drop `Events:[]` entries."""
    return re.sub(r',?\{"if":"[^"]*","Events":\[\]\}', "", body).replace('"Sockets":[,', '"Sockets":[')


def replay(stack: Stack, scenario: dict, adjust=None, before=None) -> None:
    """Send every recorded HTTP request, compare status and body."""
    for n, ex in enumerate(http_exchanges(scenario)):
        if before is not None:
            before(n, ex)
        expected = ex["response_body"]
        if adjust is not None:
            expected = adjust(ex, expected)
        stack.exchange(ex, expected)


def check_wire(stack: Stack, scenario: dict, extra=None, skip=()):
    """Every connection's commands, recorded ones plus [EMU] additions."""
    wanted = golden_commands(scenario)
    for key, more in (extra or {}).items():
        wanted[key] = wanted.get(key, []) + more
    for (port, conn), commands in wanted.items():
        if (port, conn) not in skip:
            stack.wait_commands(port, conn, commands)


# ------------------------------------------------------------------- phases

@pytest.mark.timeout(60)
def test_mi_phase(stacks):
    """mi_fs_list_empty … mi_fs_reload_no_rows, one OpenSIPS run, empty DB."""
    stack = stacks(db_rows=[])
    seen: dict[tuple[int, int], list[str]] = {}

    def run(name, adjust=no_half_made_entries_adjust, extra=None):
        scenario = load(name)
        replay(stack, scenario, adjust=adjust)
        wanted = golden_commands(scenario)
        for key, more in (extra or {}).items():
            wanted[key] = wanted.get(key, []) + more
        for key, commands in wanted.items():
            seen[key] = seen.get(key, []) + commands
            stack.wait_commands(*key, seen[key])
        return scenario

    run("mi_fs_list_empty")
    run("mi_fs_subscribe_named")
    # OpenSIPS subscribed CHANNEL_HANGUP at its next tick, after this window
    run("mi_fs_subscribe_positional", extra={(8022, 1): ["event json CHANNEL_HANGUP"]})
    # an unrecorded scenario of this run subscribed TALK on 8021 (the fs_list
    # replies of the next scenarios show it)
    assert stack.mi("fs_subscribe", {"freeswitch_url": stack.rewrite(":ClueCon@127.0.0.1:8021"),
                                     "events": ["TALK"]})["result"] == "OK"
    seen[(8021, 1)].append("event json TALK")
    stack.wait_commands(8021, 1, seen[(8021, 1)])
    run("mi_fs_subscribe_errors")
    run("mi_fs_subscribe_known_socket_no_password")
    run("mi_fs_unsubscribe")
    # the last unsubscribes closed both connections, without any nixevent
    stack.wait_closed(8021, 1)
    stack.wait_closed(8022, 1)
    run("mi_fs_reload_no_rows")
    stack.wait_closed(8021, 2)  # the reload dropped the only reference
    assert stack.commands(8021, 2) == ["auth ClueCon", "event json CHANNEL_STATE"]
    assert len(stack.sims[8021].clients) == 2 and len(stack.sims[8022].clients) == 1


def no_half_made_entries_adjust(ex, expected):
    if '"Sockets"' in expected:
        return no_half_made_entries(expected)
    return expected


@pytest.mark.timeout(60)
def test_db_phase(stacks):
    """db_fs_reload_rows, _empty_events, _version_mismatch, _clear (one run)."""
    stack = stacks(db_rows=[])

    rows = load("db_fs_reload_rows")

    def before_rows(n, ex):
        if ex["label"] == "fs_reload":
            stack.write_db(rows["db_before"]["freeswitch"])

    # MI subscribe TALK, then the reload replaces it: with OpenSIPS' 1 s tick the
    # reload came before TALK was ever sent; we send at once, so we wait for it
    # and expect it to be nixed by the reload.
    ex0 = http_exchanges(rows)[0]
    stack.exchange(ex0, ex0["response_body"])
    stack.wait_commands(8021, 1, ["auth ClueCon", "event json TALK"])
    rest = dict(rows, exchanges=http_exchanges(rows)[1:])
    replay(stack, rest, before=before_rows)
    golden = golden_commands(rows)
    assert golden[(8021, 1)] == ["auth ClueCon", "event json CHANNEL_CREATE", "event json DTMF",
                                 "event json CHANNEL_HANGUP"]
    # (the manager sends one change per event in first-subscribed order)
    stack.wait_commands(8021, 1, ["auth ClueCon", "event json TALK", "nixevent TALK",
                                  "event json CHANNEL_CREATE", "event json DTMF",
                                  "event json CHANNEL_HANGUP"])
    stack.wait_commands(8022, 1, golden[(8022, 1)])

    empty = load("db_fs_reload_empty_events")
    db_states = iter(["db_before", "db_before_2", "db_before_3"])

    def before_empty(n, ex):
        if "fs_reload" in ex["label"]:
            stack.write_db(empty[next(db_states)]["freeswitch"])

    # [EMU] the bad row (empty / NULL events_csv) is skipped and the other rows
    # load; OpenSIPS aborted and kept the old set, which held the same rows.
    replay(stack, empty, before=before_empty)
    stack.wait_commands(8022, 1, golden[(8022, 1)] + golden_commands(empty)[(8022, 1)])

    mismatch = load("db_fs_reload_version_mismatch")
    good_rows = mismatch["db_before"]["freeswitch"]
    states = {
        "fs_reload, version 2": lambda: stack.write_db(good_rows, version=2),
        "fs_reload, no version row": lambda: stack.write_db(good_rows, version=None),
        "fs_reload, table missing": lambda: stack.write_db([], table_present=False),
        "fs_reload, restored": lambda: stack.write_db(good_rows),
    }
    replay(stack, mismatch, before=lambda n, ex: states.get(ex["label"], lambda: None)())
    assert golden_commands(mismatch)[(8022, 1)] == ["nixevent TALK", "nixevent NOTALK"]
    stack.wait_commands(8022, 1, golden[(8022, 1)] + golden_commands(empty)[(8022, 1)]
                        + golden_commands(mismatch)[(8022, 1)])

    clear = load("db_fs_reload_clear")
    stack.write_db([])
    replay(stack, clear)
    # no reference left: both connections closed, no nixevent sent
    stack.wait_closed(8021, 1)
    stack.wait_closed(8022, 1)
    assert stack.commands(8022, 1)[-1] == "nixevent NOTALK"
    assert stack.commands(8021, 1)[-1] == "event json CHANNEL_HANGUP"


@pytest.mark.timeout(30)
def test_db_empty_csv_field_does_not_crash(stacks):
    """dbcrash: OpenSIPS lists "" and then segfaults; we drop the empty field."""
    scenario = load("db_fs_reload_empty_csv_field_crash")
    stack = stacks(db_rows=[])
    stack.write_db(scenario["db_before"]["freeswitch"])

    def adjust(ex, expected):  # [EMU] TALK,,NOTALK -> ["TALK","NOTALK"]
        return expected.replace('["TALK","","NOTALK"]', '["TALK","NOTALK"]')

    replay(stack, scenario, adjust=adjust)
    assert golden_commands(scenario)[(8021, 1)] == ["auth ClueCon", "event json TALK"]
    stack.wait_commands(8021, 1, ["auth ClueCon", "event json TALK", "event json NOTALK"])
    assert stack.mi("fs_list")["result"] == {"Sockets": [
        {"if": "127.0.0.1:8021", "Events": ["TALK", "NOTALK"]}]}


@pytest.mark.timeout(30)
def test_startup_phase(stacks):
    """DB rows and an fs_subscribe modparam at start-up, then a reload."""
    scenario = load("startup_modparam_and_db")
    stack = stacks(db_rows=scenario["db_at_startup"]["freeswitch"], modparams=(
        'modparam("freeswitch_scripting", "fs_subscribe", '
        '":ClueCon@127.0.0.1:8021?CHANNEL_ANSWER,BACKGROUND_JOB")'))
    golden = golden_commands(scenario)
    # the start-up conversation is over before the first MI request
    assert golden[(8021, 1)][:4] == ["auth ClueCon", "event json DTMF",
                                     "event json CHANNEL_ANSWER", "event json BACKGROUND_JOB"]
    stack.wait_commands(8021, 1, golden[(8021, 1)][:4])
    stack.wait_commands(8022, 1, golden[(8022, 1)])
    replay(stack, scenario)
    check_wire(stack, scenario)


@pytest.mark.timeout(30)
def test_two_fs_subscribe_modparams_do_not_crash(stacks):
    """startupcrash: OpenSIPS segfaults on a second fs_subscribe modparam."""
    scenario = load("startup_two_fs_subscribe_modparams_crash")
    lines = "\n".join(scenario["modparams"])
    stack = stacks(modparams=lines)
    assert stack.mi("fs_list")["result"] == {"Sockets": [
        {"if": "127.0.0.1:8022", "Events": ["DTMF"]},
        {"if": "127.0.0.1:8021", "Events": ["BACKGROUND_JOB", "CHANNEL_ANSWER"]},
    ]}
    stack.wait_commands(8021, 1, ["auth ClueCon", "event json CHANNEL_ANSWER",
                                  "event json BACKGROUND_JOB"])
    stack.wait_commands(8022, 1, ["auth ClueCon", "event json DTMF"])


@pytest.mark.timeout(60)
def test_auth_phase(stacks):
    """auth_userauth_and_credential_updates, on a simulator that, like real
    FreeSWITCH, wants `userauth user@domain:pass`: the recorded peer took
    `userauth admin:ClueCon`. So the first login (same command on the wire) is
    refused here, the DB row's username is `admin@127.0.0.1`, and the `auth`
    password is refused by setting the simulator's password to another one,
    as the recorded peer refused every `auth`."""
    scenario = load("auth_userauth_and_credential_updates")
    stack = stacks(sims=(8023,), users=[SimUser("admin@127.0.0.1", "ClueCon")])
    box = stack.sims[8023]
    box.set_password("NotClueCon")
    exchanges = {e["label"]: e for e in http_exchanges(scenario)}

    def send(label):
        ex = exchanges[label]
        stack.exchange(ex, ex["response_body"])

    def commands_of_all_connections():
        return [list(c.commands) for c in box.clients]

    send("fs_subscribe admin:ClueCon@127.0.0.1:8023")
    golden = golden_commands(scenario)
    assert golden[(8023, 1)][0] == "userauth admin:ClueCon"
    with gevent.Timeout(5):
        while not box.clients:
            gevent.sleep(0.02)
    stack.wait_commands(8023, 1, ["userauth admin:ClueCon"])  # refused by the simulator
    send("fs_subscribe ':ClueCon@127.0.0.1:8023' (no username)")
    # from the next attempt on the credentials are `auth ClueCon` (refused, as recorded)
    with gevent.Timeout(5):
        while not any(c.commands[:1] == ["auth ClueCon"] for c in box.clients):
            gevent.sleep(0.02)
    assert golden[(8023, 2)] == ["auth ClueCon"]
    send("fs_list while auth keeps failing")
    stack.write_db([{"id": 1, "username": "admin@127.0.0.1", "password": "ClueCon",
                     "ip": "127.0.0.1", "port": 8023, "events_csv": "DTMF,TALK"}])
    send("fs_reload with a username row")
    with gevent.Timeout(5):
        while not any(c.authed for c in box.clients):
            gevent.sleep(0.02)
    authed = [c for c in box.clients if c.authed]
    assert len(authed) == 1
    conn = box.clients.index(authed[0]) + 1
    assert golden[(8023, 6)][:3] == ["userauth admin:ClueCon", "event json DTMF", "event json TALK"]
    stack.wait_commands(8023, conn, ["userauth admin@127.0.0.1:ClueCon", "event json DTMF",
                                     "event json TALK"])
    send("fs_list after reload")
    # a URL with another password does not change a DB-provisioned socket
    send("MI URL with another password on a DB-provisioned socket (credentials are NOT updated for DB sockets)")
    stack.wait_commands(8023, conn, ["userauth admin@127.0.0.1:ClueCon", "event json DTMF",
                                     "event json TALK", "event json NOTALK"])
    box.drop(notice=True)
    with gevent.Timeout(5):
        while len(box.clients) < conn + 1 or not box.clients[conn].commands[3:]:
            gevent.sleep(0.02)
    assert golden[(8023, 7)] == ["userauth admin:ClueCon", "event json DTMF", "event json TALK",
                                 "event json NOTALK"]
    stack.wait_commands(8023, conn + 1, ["userauth admin@127.0.0.1:ClueCon", "event json DTMF",
                                         "event json TALK", "event json NOTALK"])
    send("fs_list")
    assert all(c[0] in ("userauth admin:ClueCon", "auth ClueCon")
               for c in commands_of_all_connections()[:conn - 1])


# ---------------------------------------------------------------- freeswitch_esl

def esl_calls(scenario: dict):
    """The recorded `freeswitch_esl(cmd, url)` calls (raise_event E_SCRIPT_CMD)
    and the other HTTP exchanges, in order."""
    for ex in http_exchanges(scenario):
        body = json.loads(ex["request_body"])
        if body["method"] == "raise_event":
            args = json.loads(body["params"]["params"])
            yield ex, (args["cmd"], args["url"])
        else:
            yield ex, None


@pytest.mark.timeout(60)
def test_esl_phase(stacks):
    """esl_freeswitch_esl_api through MI `freeswitch_esl`: same commands on the
    wire; results per docs/protocols/scripting.md §7.2 next to OpenSIPS' Reply-Text-only results."""
    scenario = load("esl_freeswitch_esl_api")
    stack = stacks()
    box = stack.sims[8021]
    tx_by_command: dict[str, str] = {}
    wire = scenario["esl_wire"]
    for i, w in enumerate(wire):  # recorded reply body for each recorded command
        if w["dir"] == "rx" and w["esl_port"] == 8021:
            reply = next((x["data"] for x in wire[i + 1:] if x["dir"] == "tx"
                          and x["esl_port"] == 8021), "")
            tx_by_command.setdefault(w["data"].strip("\n"), reply)

    results = []
    for ex, call in esl_calls(scenario):
        if call is None:
            stack.exchange(ex, ex["response_body"])
            if "BACKGROUND_JOB" in ex["request_body"]:
                stack.wait_commands(8021, 1, ["auth ClueCon", "event json BACKGROUND_JOB"])
            continue
        cmd, url = call
        reply = stack.mi("freeswitch_esl", [cmd, stack.rewrite(url)])
        results.append((cmd, url, ex["result_params"], reply))

    by_label = {(cmd, url): (opensips, ours) for cmd, url, opensips, ours in results}

    def ok(cmd, url=":ClueCon@127.0.0.1:8021"):
        opensips, ours = by_label[(cmd, url)]
        assert opensips["rc"] == 1 and "result" in ours, (cmd, ours)
        return opensips["reply"], ours["result"]

    def err(cmd, url):
        opensips, ours = by_label[(cmd, url)]
        assert opensips["rc"] == -1 and opensips["reply"] == "<unset>"
        return ours["error"]

    # api: OpenSIPS gives "" (no Reply-Text); we give the api body
    status_text = ok("api status")[1]
    assert ok("api status")[0] == "" and status_text.startswith("UP 0 years")
    assert "is ready\n" in status_text and status_text.endswith("\n")
    assert ok("api status", "127.0.0.1:8021")[1].startswith("UP ")
    assert ok("api version\n") == ("", box.run_api("version", ""))
    assert re.fullmatch(r"[0-9]+\n", ok("api uptime\n\n")[1])
    nosuch = ok("api nosuchcmd")
    assert nosuch == ("", "-ERR nosuchcmd Command not found!\n")
    assert tx_by_command["api nosuchcmd"].endswith("\n\n" + nosuch[1])
    # command/reply: the Reply-Text, as OpenSIPS
    opensips, ours = ok("bgapi status")
    assert re.fullmatch(r"\+OK Job-UUID: [0-9a-f-]{36}", opensips) and \
        re.fullmatch(r"\+OK Job-UUID: [0-9a-f-]{36}", ours)
    originate = "bgapi originate {origination_uuid=123}user/1010 9386\njob-uuid: foobar"
    assert ok(originate) == ("+OK Job-UUID: foobar", "+OK Job-UUID: foobar")
    for cmd in ("event json HEARTBEAT", "nixevent HEARTBEAT", "bogus"):
        assert ok(cmd)[0] == ok(cmd)[1]
    # errors
    assert err("", ":ClueCon@127.0.0.1:8021") == {"code": 400, "message": "Empty ESL command"}
    assert err("api status", "127.0.0.1:8029") == {"code": 500, "message": "Internal Error"}
    assert err("api status", ":ClueCon@127.0.0.1:8029") == {
        "code": 503, "message": "FreeSWITCH not connected"}
    assert err("api status", "::bad url") == {"code": 500, "message": "Internal Error"}
    # [EMU] the first call on a new socket waits for the login and succeeds
    first = [r for c, u, o, r in results if u == ":ClueCon@127.0.0.1:8022"]
    assert [o["rc"] for c, u, o, r in results if u == ":ClueCon@127.0.0.1:8022"] == [-1, 1]
    assert all(r["result"].startswith("UP ") for r in first)

    # the same commands on the wire, in the same order
    golden = golden_commands(scenario)
    stack.wait_commands(8021, 1, golden[(8021, 1)])
    # [EMU] OpenSIPS' first call on 8022 failed before sending anything; ours ran
    assert golden[(8022, 1)] == ["auth ClueCon", "api status"]
    stack.wait_commands(8022, 1, ["auth ClueCon", "api status", "api status"])
    assert len(stack.sims[8022].clients) == 1


@pytest.mark.timeout(30)
def test_esl_timeout_phase(stacks):
    """esl_freeswitch_esl_timeout: a reply slower than esl_cmd_timeout is a
    504; its late reply is discarded and the next command gets its own."""
    scenario = load("esl_freeswitch_esl_timeout")
    stack = stacks(esl_cmd_timeout=300)
    url = stack.rewrite(":ClueCon@127.0.0.1:8021")
    assert stack.mi("fs_subscribe", {"freeswitch_url": url, "events": ["BACKGROUND_JOB"]})[
        "result"] == "OK"
    stack.wait_commands(8021, 1, ["auth ClueCon", "event json BACKGROUND_JOB"])
    calls = [call for _, call in esl_calls(scenario)]
    assert calls == [("api status", ":ClueCon@127.0.0.1:8021"),
                     ("api version", ":ClueCon@127.0.0.1:8021")]
    reply_delay = 0.6  # longer than esl_cmd_timeout
    stack.sims[8021].delay(int(reply_delay * 1000))
    assert stack.mi("freeswitch_esl", ["api status", url]) == {
        "jsonrpc": "2.0", "error": {"code": 504, "message": "ESL command timeout"}, "id": 1}
    stack.sims[8021].delay(0)
    gevent.sleep(reply_delay)  # the late reply arrives meanwhile and is dropped
    version = stack.mi("freeswitch_esl", ["api version", url])
    assert version["result"] == stack.sims[8021].run_api("version", "")
    stack.wait_commands(8021, 1, ["auth ClueCon", "event json BACKGROUND_JOB"]
                        + golden_commands(scenario)[(8021, 1)])


@pytest.mark.timeout(30)
def test_reconnect_phase(stacks):
    """reconnect_disconnect_notice, then reconnect_bad_password: after a loss
    the socket logs in again and resubscribes everything, in subscription
    order; while the password is refused it keeps retrying (1 s apart); the
    fs_list set never changes."""
    stack = stacks(sims=(8021,))
    box = stack.sims[8021]
    assert stack.mi("fs_subscribe", {"freeswitch_url": stack.rewrite(":ClueCon@127.0.0.1:8021"),
                                     "events": ["CHANNEL_STATE", "DTMF", "HEARTBEAT"]})[
        "result"] == "OK"
    subscribed = ["auth ClueCon", "event json CHANNEL_STATE", "event json DTMF",
                  "event json HEARTBEAT"]
    stack.wait_commands(8021, 1, subscribed)

    notice = load("reconnect_disconnect_notice")
    assert golden_commands(notice)[(8021, 2)] == subscribed
    box.drop(notice=True)
    stack.wait_commands(8021, 2, subscribed)

    bad = load("reconnect_bad_password")
    golden = golden_commands(bad)
    assert [golden[(8021, n)] for n in range(3, 8)] == [["auth ClueCon"]] * 5
    assert golden[(8021, 8)] == subscribed
    box.set_password("Other")
    box.drop(notice=False)
    with gevent.Timeout(10):
        while len(box.clients) < 4:  # two refused logins at least
            gevent.sleep(0.02)
    box.set_password("ClueCon")
    with gevent.Timeout(10):
        while not box.clients[-1].authed:
            gevent.sleep(0.02)
    last = len(box.clients)
    stack.wait_commands(8021, last, subscribed)
    assert all(stack.commands(8021, n) == ["auth ClueCon"] for n in range(3, last))
    ex = http_exchanges(bad)[0]
    stack.exchange(ex, ex["response_body"])

"""Errors and answers a person can act on, from a running service: hosts that
are not hosts are refused (no DNS retried for ever), `[::1]:PORT` reaches a
FreeSWITCH on the IPv6 loopback, `version` names opensips-fs, `help` has a
one-line description for every command."""

import socket

import pytest

from opensips_fs import __version__
from opensips_fs.mi.core import NO_HELP
from opensips_fs.sim import FsSimulator, SimSettings
from support.ops import OpsStack, wait_until

pytestmark = pytest.mark.timeout(30)


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def stack(tmp_path):
    made = []

    def make(**kwargs):
        made.append(OpsStack(tmp_path, **kwargs))
        return made[-1]
    yield make
    for s in made:
        s.stop()


def test_a_host_that_is_no_host_is_refused_and_creates_nothing(stack):
    s = stack()
    for url in ("::::@@@", ":pw@@@:8021", ":pw@-bad-:8021", ":pw@10.0.0.300"):
        reply = s.mi("fs_subscribe", {"freeswitch_url": url, "events": ["DTMF"]})
        assert reply["error"] == {"code": 500, "message": "Internal Error"}, url
    assert s.mi("fs_list")["result"] == {"Sockets": []}
    assert s.app.manager.sockets() == []


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_bracketed_ipv6_reaches_freeswitch_on_the_ipv6_loopback(stack):
    box = FsSimulator(SimSettings(password="ClueCon", host="::1")).start()
    try:
        s = stack()
        assert s.mi("fs_subscribe", {"freeswitch_url": f":ClueCon@[::1]:{box.port}",
                                     "events": ["DTMF"]})["result"] == "OK"
        box.wait_command("event json DTMF")
        assert s.mi("fs_list")["result"] == {
            "Sockets": [{"if": f"::1:{box.port}", "Events": ["DTMF"]}]}
        wait_until(lambda: s.mi("fs_status")["result"]["Sockets"][0]["state"] == "connected")
        reply = s.mi("freeswitch_esl", ["api status", f"[::1]:{box.port}"])
        assert "UP" in reply["result"]
        # the same socket by its bracketed and its DB (bare) spelling
        assert s.mi("fs_unsubscribe", [f"[::1]:{box.port}", ["DTMF"]])["result"] == "OK"
        assert s.mi("fs_list")["result"] == {"Sockets": []}
    finally:
        box.stop()


def test_version_names_opensips_fs_next_to_server(stack):
    s = stack()
    for transport in ("http", "udp"):
        result = s.mi("version", transport=transport)["result"]
        assert list(result) == ["Server", "opensips-fs"]
        assert result["Server"].startswith("OpenSIPS (4.1.0-dev (")
        assert result["opensips-fs"] == __version__


def test_help_describes_every_command_in_one_line(stack):
    s = stack()
    commands = s.app.registry.commands()
    assert len(commands) >= 20
    for command in commands:
        for name in {command.canonical, command.flat}:
            result = s.mi("help", [name])["result"]
            assert result["Exported by"] == command.module
            text = result["Help"]
            assert text and text != NO_HELP and "\n" not in text and len(text) < 160, name


def notices(s, text):
    return [line for line in s.log.lines() if "NOTICE:" in line and text in line]


def test_every_mi_error_is_logged_once_with_command_transport_and_reason(stack):
    s = stack()
    reply = s.mi("fs_subscribe", {"freeswitch_url": "127.0.0.1:8021", "events": ["DTMF"]})
    assert reply["error"] == {"code": 500, "message": "Internal Error"}     # OpenSIPS's bytes
    assert len(notices(s, "MI fs_subscribe over http answered 500 Internal Error: refusing to "
                          "connect to FS 127.0.0.1:8021 without a password")) == 1
    reply = s.mi("event_subscribe", ["E_NO_SUCH_EVENT", "udp:127.0.0.1:9"], transport="udp")
    assert reply["error"] == {"code": 400, "message": "Bad parameter value"}
    assert len(notices(s, "MI event_subscribe over datagram answered 400 Bad parameter value")) == 1
    reply = s.mi("fs_subscribe", {"freeswitch_url": "::::@@@", "events": ["DTMF"]})
    assert len(notices(s, "MI fs_subscribe over http answered 500 Internal Error: failed to "
                          "parse FS URL: bad host '@@'")) == 1
    reply = s.mi("log_level", {"level": "x"})
    assert len(notices(s, "MI log_level over http answered -32602 Invalid params: "
                          "Bad type for parameter 'level'")) == 1
    assert len(notices(s, "MI nope over http answered -32601 Method not found")) == 0
    s.mi("nope")
    assert len(notices(s, "MI nope over http answered -32601 Method not found")) == 1
    status, _, _ = s.post_raw(b"{not json")
    assert status == 200
    assert len(notices(s, "MI request over http refused: the body is not JSON (9 bytes)")) == 1
    assert not [line for line in s.log.lines() if "ERROR:" in line]

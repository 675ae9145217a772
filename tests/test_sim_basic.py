"""Simulator basics over real sockets: greeting, auth, events, api, bgapi,
push/raise, the record of commands."""

import json

import pytest

from opensips_fs.sim import FsSimulator, SimSettings, SimUser
from support.esl_client import EslTestClient

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def box():
    with FsSimulator(SimSettings(port=0, heartbeat=0)) as b:
        yield b


def test_ephemeral_port_and_greeting(box):
    assert box.port > 0 and box.address == "127.0.0.1:%d" % box.port
    c = EslTestClient(box.port)
    f = c.frame()
    assert f.raw == b"Content-Type: auth/request\n\n"
    assert c.sent_so_far() == []  # nothing but the greeting before the client speaks


def test_auth_ok_and_bad(box):
    c = EslTestClient(box.port).login()
    bad = EslTestClient(box.port)
    bad.frame()
    bad.send(b"auth nope\n\n")
    assert bad.wait_eof()
    frames = bad.collect(0.1) or bad.frames
    raw = b"".join(f.raw for f in frames)
    assert raw == (b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n"
                   b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n"
                   b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n")
    assert box.clients[0].commands == ["auth ClueCon"]
    assert box.clients[1].commands == ["auth nope"]
    assert box.clients[0].authed and not box.clients[1].authed
    c.close()


def test_raise_event_json_and_plain(box):
    j = EslTestClient(box.port).login()
    p = EslTestClient(box.port).login()
    assert j.cmd("event json CUSTOM my::thing").header("Reply-Text") == "+OK event listener enabled json"
    assert p.cmd("event plain CUSTOM my::thing").header("Reply-Text") == "+OK event listener enabled plain"
    box.wait_clients(2)
    sent = box.raise_event("CUSTOM", {"Event-Subclass": "my::thing", "X-A": "a b"}, body="hi")
    assert sent == 2
    fj = j.frame()
    assert fj.header_block.startswith(b"Content-Length: ")
    obj = json.loads(fj.content)
    assert list(obj)[:3] == ["Event-Subclass", "Event-Name", "Core-UUID"]
    assert obj["X-A"] == "a b" and obj["_body"] == "hi" and obj["Content-Length"] == "2"
    fp = p.frame()
    assert fp.content_type == "text/event-plain"
    assert b"X-A: a%20b\nContent-Length: 2\n\nhi" in fp.content
    # a subclass nobody subscribed is not delivered
    assert box.raise_event("CUSTOM", {"Event-Subclass": "other::thing"}) == 0


def test_api_and_bgapi(box):
    c = EslTestClient(box.port).login()
    r = c.cmd("api version")
    assert r.raw == b"Content-Type: api/response\nContent-Length: 45\n\nFreeSWITCH Version 1.11.3-dev~64bit ( 64bit)\n"
    assert c.cmd("api echo hello").body == b"hello"
    assert c.cmd("api echo").body == b"-ERR no reply\n"
    assert c.cmd("api uptime").content.endswith(b"\n")
    c.cmd("event json BACKGROUND_JOB")
    r = c.cmd("bgapi status\nJob-UUID: foobar")
    assert r.raw == b"Content-Type: command/reply\nReply-Text: +OK Job-UUID: foobar\nJob-UUID: foobar\n\n"
    ev = json.loads(c.frame().content)
    assert ev["Event-Name"] == "BACKGROUND_JOB" and ev["Job-UUID"] == "foobar"
    assert ev["_body"].startswith("UP 0 years")
    assert box.clients[0].commands[-1] == "bgapi status\nJob-UUID: foobar"


def test_push_event_and_raw(box):
    c = EslTestClient(box.port).login()
    c.cmd("event json DTMF")
    body = b'{"Event-Name": "DTMF",  "DTMF-Digit":"9" }'
    assert box.push_event(body) == 1
    assert c.frame().raw == b"Content-Length: 42\nContent-Type: text/event-json\n\n" + body
    assert box.push_event({"Event-Name": "CHANNEL_HANGUP"}) == 0
    assert box.push_event({"Event-Name": "CHANNEL_HANGUP"}, force=True) == 1
    assert c.frame().body == b'{"Event-Name":"CHANNEL_HANGUP"}'
    assert box.push_raw(b"Content-Type: command/reply\nReply-Text: +OK stray\n\n") == 1
    assert c.frame().header("Reply-Text") == "+OK stray"


def test_userauth_limits():
    user = SimUser("esluser@127.0.0.1", "eslpass", events=["HEARTBEAT", "CHANNEL_CREATE", "CUSTOM"],
                   api=["status", "show"], log=False)
    with FsSimulator(SimSettings(port=0, heartbeat=0, users=[user])) as b:
        c = EslTestClient(b.port)
        c.frame()
        r = c.cmd("userauth esluser@127.0.0.1:eslpass")
        assert r.raw == (b"Content-Type: command/reply\nReply-Text: +OK accepted\n"
                         b"Allowed-Events: HEARTBEAT CHANNEL_CREATE CUSTOM\nAllowed-API: status,show\n"
                         b"Allowed-LOG: false\n\n")
        assert c.cmd("api uptime").header("Reply-Text") == "-ERR permission denied"
        assert c.cmd("api status").content_type == "api/response"
        assert c.cmd("event json CHANNEL_ANSWER").header("Reply-Text") == "-ERR permission denied"
        assert c.cmd("event json HEARTBEAT").header("Reply-Text") == "+OK event listener enabled json"
        assert c.cmd("log 7").header("Reply-Text") == "-ERR permission denied"


def test_wait_command_and_wait_for(box):
    c = EslTestClient(box.port).login()
    c.send(b"event json DTMF\n\n")
    client = box.wait_command("event json DTMF")
    assert client is box.clients[0] and client.events == {"DTMF"}
    assert box.wait_for(lambda: client.format == "json") is True
    with pytest.raises(TimeoutError):
        box.wait_command("nixevent DTMF", timeout=0.05)
    with pytest.raises(TimeoutError):
        box.wait_clients(2, timeout=0.05)

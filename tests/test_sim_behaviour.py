"""Simulator behaviour beyond the recordings: timers, load generation,
filters, log lines, deterministic mode, subscription rules."""

import json

import gevent
import pytest

from opensips_fs.sim import FsSimulator, SimSettings, SimUser
from support.esl_client import EslTestClient

pytestmark = pytest.mark.timeout(20)


def names(frames):
    return [json.loads(f.content)["Event-Name"] for f in frames]


def test_heartbeat_timer_and_reschedule():
    with FsSimulator(SimSettings(port=0, heartbeat=0.2)) as box:
        c = EslTestClient(box.port).login()
        c.cmd("event json ALL")
        got = names(c.collect(0.5))
        assert got[:4] == ["HEARTBEAT", "RE_SCHEDULE", "HEARTBEAT", "RE_SCHEDULE"]


def test_calls_per_second_produce_full_call_sequences():
    with FsSimulator(SimSettings(port=0, heartbeat=0, calls_per_second=20, call_duration=0.1)) as box:
        c = EslTestClient(box.port).login()
        c.cmd("event json ALL")
        frames = c.collect(1.0)
        events = [json.loads(f.content) for f in frames]
        per_leg: dict[str, list] = {}
        other: dict[str, str] = {}
        for e in events:
            if e["Event-Name"].startswith("CHANNEL_"):
                per_leg.setdefault(e["Unique-ID"], []).append(e["Event-Name"])
                if e["Channel-Name"].endswith("-a") and "variable_other_loopback_leg_uuid" in e:
                    other[e["Unique-ID"]] = e["variable_other_loopback_leg_uuid"]
        per_call = {a: per_leg[a] + per_leg.get(b, []) for a, b in other.items()}
        complete = [seq for seq in per_call.values()
                    if seq.count("CHANNEL_DESTROY") == 2 and "CHANNEL_OUTGOING" in seq]
        assert len(complete) >= 5
        for seq in complete:
            assert 25 <= len(seq) <= 40
            assert seq[0] == "CHANNEL_OUTGOING" and seq.count("CHANNEL_HANGUP_COMPLETE") == 2
        seqs = [int(e["Event-Sequence"]) for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        hb = box.session_stats()
        assert hb["since_startup"] >= 10


def test_originate_9665_hangs_up_by_itself_and_uuid_kill():
    with FsSimulator(SimSettings(port=0, heartbeat=0, call_duration=0.2)) as box:
        c = EslTestClient(box.port).login()
        c.cmd("event json CHANNEL_HANGUP_COMPLETE")
        r = c.cmd("api originate loopback/9665 &park")
        a_uuid = r.content.decode().split()[1]
        got = [json.loads(f.content) for f in c.collect(0.6)]
        assert [e["Channel-Name"] for e in got] == ["loopback/9665-b", "loopback/9665-a"]
        assert got[1]["Unique-ID"] == a_uuid and got[1]["Hangup-Cause"] == "NORMAL_CLEARING"
        assert c.cmd("api show calls count").body == b"\n0 total.\n"
        r = c.cmd("api originate {origination_uuid=11111111-2222-4333-8444-555555555555}loopback/9664 &park")
        assert r.body == b"+OK 11111111-2222-4333-8444-555555555555\n"
        assert c.cmd("api show channels count").body == b"\n2 total.\n"
        assert c.cmd("api uuid_kill 11111111-2222-4333-8444-555555555555").body == b"+OK\n"
        got = [json.loads(f.content) for f in c.collect(0.3)]
        assert len(got) == 2 and got[0]["variable_origination_uuid"] == "11111111-2222-4333-8444-555555555555"
        assert c.cmd("api originate sofia/gateway/x/1000 &park").body == b"-ERR CHAN_NOT_IMPLEMENTED\n"


def test_filters_are_an_allow_list():
    with FsSimulator(SimSettings(port=0, heartbeat=0)) as box:
        c = EslTestClient(box.port).login()
        c.cmd("event json HEARTBEAT CUSTOM a::b")
        c.cmd("filter Event-Subclass a::b")
        c.cmd("filter X-Kind -noisy")
        box.fire_heartbeat()  # no Event-Subclass header: filtered out
        box.raise_event("CUSTOM", {"Event-Subclass": "a::b", "X-Kind": "fine"})
        box.raise_event("CUSTOM", {"Event-Subclass": "a::b", "X-Kind": "noisy"})
        got = [json.loads(f.content) for f in c.sent_so_far()]
        assert [(e["Event-Name"], e.get("X-Kind")) for e in got] == [("CUSTOM", "fine")]
        c.cmd("filter delete all")
        box.fire_heartbeat()
        assert names(c.sent_so_far()) == ["HEARTBEAT"]
        c.cmd("filter Event-Name /HEART.*/")
        box.fire_heartbeat()
        box.raise_event("CUSTOM", {"Event-Subclass": "a::b"})
        assert names(c.sent_so_far()) == ["HEARTBEAT"]


def test_custom_subclass_rule():
    with FsSimulator(SimSettings(port=0, heartbeat=0)) as box:
        c = EslTestClient(box.port).login()
        assert c.cmd("event json CUSTOM foo::bar HEARTBEAT").header("Reply-Text") == "+OK event listener enabled json"
        box.fire_heartbeat()  # HEARTBEAT was taken as a subclass
        box.raise_event("CUSTOM", {"Event-Subclass": "HEARTBEAT"})
        box.raise_event("CUSTOM", {"Event-Subclass": "foo::bar"})
        box.raise_event("CUSTOM", {"Event-Subclass": "other::x"})
        box.raise_event("CUSTOM", {"X": "no subclass"})
        got = [json.loads(f.content) for f in c.sent_so_far()]
        assert [e.get("Event-Subclass") for e in got] == ["HEARTBEAT", "foo::bar", None]
        assert c.cmd("nixevent CUSTOM foo::bar").header("Reply-Text") == "+OK events nixed"
        box.raise_event("CUSTOM", {"Event-Subclass": "foo::bar"})
        assert c.sent_so_far() == []
        state = box.clients[0].state()
        assert state["events"] == ["CUSTOM"] and state["subclasses"] == ["HEARTBEAT"]


def test_user_subclass_limits():
    user = SimUser("u@d", "p", events="CUSTOM allowed::one")
    with FsSimulator(SimSettings(port=0, heartbeat=0, users=[user])) as box:
        c = EslTestClient(box.port)
        c.frame()
        r = c.cmd("userauth u@d:p")
        assert r.header("Allowed-Events") == "CUSTOM allowed::one" and r.header("Allowed-LOG") == "true"
        assert c.cmd("event json CUSTOM other::two").header("Reply-Text") == "-ERR permission denied"
        assert c.cmd("event json CUSTOM allowed::one").header("Reply-Text") == "+OK event listener enabled json"
        bad = EslTestClient(box.port)
        bad.frame()
        bad.send(b"userauth u:p\n\n")  # no @domain
        assert bad.wait_eof() and bad.frames[0].header("Reply-Text") == "-ERR invalid"


def test_log_lines():
    with FsSimulator(SimSettings(port=0, heartbeat=0)) as box:
        a = EslTestClient(box.port).login()
        assert a.cmd("log 5").header("Reply-Text") == "+OK log level 5 [5]"
        b = EslTestClient(box.port).login()
        assert b.cmd("api log NOTICE esl probe log line").body == b"+OK\n"
        assert b.cmd("api log DEBUG too verbose").body == b"+OK\n"
        frames = a.collect(0.2)
        assert len(frames) == 1
        f = frames[0]
        assert f.header_block.startswith(b"Content-Type: log/data\nContent-Length: %d\nLog-Level: 5\n"
                                         b"Text-Channel: 3\nLog-File: mod_commands.c\nLog-Func: log_function\n"
                                         b"Log-Line: 7247\nUser-Data: \n\n" % len(f.content))
        assert f.content.endswith(b" [NOTICE] mod_commands.c:7247 esl probe log line\n")


def test_deterministic_mode():
    def run():
        with FsSimulator(SimSettings(port=0, heartbeat=0, seed=42, clock=lambda: 1795693969.5)) as box:
            c = EslTestClient(box.port).login()
            c.cmd("event json BACKGROUND_JOB")
            c.cmd("bgapi status")
            return c.frame().body, box.identity.core_uuid
    first, second = run(), run()
    body = json.loads(first[0])
    assert body["Event-Date-Timestamp"] == "1795693969500000" and body["Core-UUID"] == first[1]
    assert first[0] == second[0]


def test_burst_backpressure_without_loss():
    with FsSimulator(SimSettings(port=0, heartbeat=0, queue_size=1000)) as box:
        c = EslTestClient(box.port).login()
        c.cmd("event json CUSTOM sim::burst")
        done = gevent.spawn(box.burst, 5000, chunk=100)
        got = 0
        while got < 5000:
            c.frame()
            got += 1
        assert done.get(timeout=5) == 5000
        assert box.clients[0].lost_total == 0 and box.clients[0].sent_events == 5000


def test_userauth_without_domain_and_no_password():
    """The OpenSIPS recordings' stand-in on 8023: only 'userauth admin:ClueCon'."""
    with FsSimulator(SimSettings(port=0, heartbeat=0, password=None, users=[SimUser("admin", "ClueCon")],
                                 userauth_requires_domain=False)) as box:
        c = EslTestClient(box.port)
        c.frame()
        assert c.cmd("userauth admin:ClueCon").raw == (
            b"Content-Type: command/reply\nReply-Text: +OK accepted\nAllowed-Events: all\nAllowed-API: all\n\n")
        bad = EslTestClient(box.port)
        bad.frame()
        bad.send(b"auth ClueCon\n\n")
        assert bad.wait_eof() and bad.frames[0].header("Reply-Text") == "-ERR invalid"


def test_burst_with_body_in_plain():
    with FsSimulator(SimSettings(port=0, heartbeat=0)) as box:
        c = EslTestClient(box.port).login()
        c.cmd("event plain CUSTOM sim::burst")
        assert box.burst(3, body_size=300_000) == 3
        for _ in range(3):
            f = c.frame()
            assert len(f.content) > 300_000 and f.content.endswith(b"Content-Length: 300000\n\n" + b"b" * 300_000)


def test_stand_in_version_and_fixed_idle_cpu():
    """The OpenSIPS recordings' stand-ins: 1.10.12 texts, Idle-CPU 98.7."""
    with FsSimulator(SimSettings(port=0, heartbeat=0, version="1.10.12-release", idle_cpu=98.7,
                                 hostname="fakefs")) as box:
        c = EslTestClient(box.port).login()
        assert c.cmd("api version").body == b"FreeSWITCH Version 1.10.12-release~64bit (-release 64bit)\n"
        status = c.cmd("api status").content.decode()
        assert status.split("\n")[1:] == [
            "FreeSWITCH (Version 1.10.12 -release 64bit) is ready", "0 session(s) since startup",
            "0 session(s) - peak 0, last 5min 0 ", "0 session(s) per Sec out of max 30, peak 0, last 5min 0 ",
            "1000 session(s) max", "min idle cpu 0.00/98.70", "Current Stack Size/Max 240K/8192K", ""]
        c.cmd("event json HEARTBEAT")
        box.fire_heartbeat()
        hb = json.loads(c.frame().content)
        assert (hb["FreeSWITCH-Version"], hb["Event-Calling-Line-Number"], hb["Idle-CPU"]) == (
            "1.10.12-release~64bit", "76", "98.700000")


def test_nixevent_turns_the_event_flag_on():
    with FsSimulator(SimSettings(port=0, heartbeat=0)) as box:
        c = EslTestClient(box.port).login()
        assert c.cmd("nixevent ALL").header("Reply-Text") == "+OK events nixed"
        assert c.cmd("noevents").header("Reply-Text") == "+OK no longer listening for events"
        assert c.cmd("noevents").header("Reply-Text") == "-ERR not listening for events"

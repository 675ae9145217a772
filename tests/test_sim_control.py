"""The simulator's control socket and its command line (a real process)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from opensips_fs.sim import FsSimulator, SimSettings, SimUser
from opensips_fs.sim.cli import box_settings, build_parser
from opensips_fs.sim.control import ControlServer
from support.esl_client import EslTestClient

pytestmark = pytest.mark.timeout(30)


class Control:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def __call__(self, request) -> dict:
        line = request if isinstance(request, bytes) else json.dumps(request).encode()
        self.sock.sendall(line + b"\n")
        return json.loads(self.file.readline())


@pytest.fixture
def boxes():
    a = FsSimulator(SimSettings(port=0, heartbeat=0, hostname="fakefs",
                                core_uuid="2a1b4c3d-0000-4000-8000-00000000c0de")).start()
    b = FsSimulator(SimSettings(port=0, heartbeat=0)).start()
    ctl = ControlServer([a, b]).start()
    yield a, b, Control(ctl.port)
    ctl.stop()
    a.stop()
    b.stop()


def test_state_event_push_raw_drop(boxes):
    a, b, ctl = boxes
    c = EslTestClient(a.port).login()
    c.cmd("event json CHANNEL_STATE DTMF")
    state = ctl({"op": "state", "listen": a.address})
    assert state["ok"] and state["conns"][0]["events"] == ["CHANNEL_STATE", "DTMF"]
    assert state["conns"][0]["commands"] == ["auth ClueCon", "event json CHANNEL_STATE DTMF"]
    assert state["conns"][0]["format"] == "json" and state["conns"][0]["authed"] is True
    assert state["boxes"][0]["core_uuid"] == "2a1b4c3d-0000-4000-8000-00000000c0de"
    raw = ctl({"op": "state", "listen": a.address, "bytes": True})["conns"][0]
    assert raw["rx"] == "auth ClueCon\n\nevent json CHANNEL_STATE DTMF\n\n"
    assert raw["tx"].startswith("Content-Type: auth/request\n\nContent-Type: command/reply\n")
    # an event with the full header block
    assert ctl({"op": "event", "headers": {"Event-Name": "DTMF", "DTMF-Digit": "5"}}) == {"ok": True, "sent": 1}
    ev = json.loads(c.frame().content)
    assert ev["Event-Name"] == "DTMF" and ev["FreeSWITCH-Hostname"] == "fakefs" and ev["DTMF-Digit"] == "5"
    # the stand-ins' exact pushes (golden/opensips fake_esl_control)
    pushed = {"Event-Name": "CHANNEL_STATE", "Core-UUID": "c0de", "Channel-State": "CS_ROUTING",
              "Unique-ID": "5a5a-01", "Caller-Caller-ID-Number": "1001"}
    assert ctl({"op": "push", "body": pushed}) == {"ok": True, "sent": 1}
    assert c.frame().raw == (b'Content-Length: 133\nContent-Type: text/event-json\n\n{"Event-Name":"CHANNEL_STATE",'
                             b'"Core-UUID":"c0de","Channel-State":"CS_ROUTING","Unique-ID":"5a5a-01",'
                             b'"Caller-Caller-ID-Number":"1001"}')
    assert ctl({"op": "push", "body": {"Event-Name": "CHANNEL_HANGUP"}}) == {"ok": True, "sent": 0}
    assert ctl({"op": "push", "body": {"Event-Name": "CHANNEL_HANGUP"}, "force": True})["sent"] == 1
    c.frame()
    raw = "Content-Length: 9\nContent-Type: text/event-json\n\nnot json!"
    assert ctl({"op": "raw", "data": raw}) == {"ok": True, "sent": 1}
    assert c.frame().raw == raw.encode()
    assert ctl({"op": "drop"}) == {"ok": True, "kicked": 1}
    assert c.wait_eof()


def test_burst_over_control(boxes):
    a, b, ctl = boxes
    c = EslTestClient(b.port).login()
    c.cmd("event plain CUSTOM sim::burst")
    answer = ctl({"op": "burst", "count": 3000, "listen": b.address})
    assert answer == {"ok": True, "sent": 3000}
    seqs: list[int] = []
    while len(seqs) < 3000:
        f = c.frame()
        seqs.append(int(_event_sequence(f.content)))
    assert seqs == list(range(seqs[0], seqs[0] + 3000))
    conn = ctl({"op": "state", "listen": b.address})["conns"][0]
    assert (conn["first_seq"], conn["last_seq"], conn["sent_events"]) == (seqs[0], seqs[-1], 3000)


def test_faults_over_control(boxes):
    a, b, ctl = boxes
    assert ctl({"op": "delay", "ms": 10}) == {"ok": True}
    assert a.delay_ms == 10 and b.delay_ms == 10
    assert ctl({"op": "password", "password": "Other", "listen": a.address}) == {"ok": True}
    assert a.password == "Other" and b.password == "ClueCon"
    assert ctl({"op": "refuse", "on": True, "listen": a.address}) == {"ok": True}
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", a.port), timeout=2)
    assert ctl({"op": "refuse", "on": False, "listen": a.address}) == {"ok": True}
    EslTestClient(a.port).login("Other")
    assert ctl({"op": "stall", "seconds": 0.01}) == {"ok": True}


def test_bad_requests_change_nothing(boxes):
    a, b, ctl = boxes
    assert ctl(b"not json")["ok"] is False
    assert ctl({"op": "nope"}) == {"ok": False, "error": "unknown op 'nope'"}
    assert ctl({"op": ["burst"]}) == {"ok": False, "error": "unknown op ['burst']"}
    assert ctl({"op": "delay", "ms": "x"})["ok"] is False
    assert ctl({"op": "state", "listen": "127.0.0.1:1"})["ok"] is False
    assert ctl({"op": "event", "headers": {}})["ok"] is False
    assert a.delay_ms == 0 and a.password == "ClueCon"


def _event_sequence(body: bytes) -> int:
    match = re.search(rb"\nEvent-Sequence: (\d+)\n", body)
    assert match is not None, body
    return int(match.group(1))


def _sim_exe():
    exe = os.path.join(os.path.dirname(sys.executable), "opensips-fs-sim")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "opensips_fs.sim.cli"]


def test_cli_help_documents_every_option():
    out = subprocess.run(_sim_exe() + ["--help"], capture_output=True, text=True, timeout=20).stdout
    for option in ("--listen", "--password", "--user", "--user-events", "--user-api", "--heartbeat",
                   "--control", "--calls-per-second", "--hostname", "--core-uuid", "--seed",
                   "--queue-size", "--max-lost"):
        assert option in out


def test_cli_options_reach_each_box_settings():
    args = build_parser().parse_args([
        "--listen", "127.0.0.1:8021", "--listen", "[::1]:8022", "--hostname", "fs", "--seed", "7",
        "--core-uuid", "2a1b4c3d-0000-4000-8000-00000000c0de", "--no-password", "--call-duration", "0.3",
        "--queue-size", "10", "--max-lost", "2", "--acl", "127.0.0.0/8", "--fs-version", "1.10.12-release",
        "--userauth-without-domain", "--keep-closed", "5", "--record-limit", "64", "--heartbeat", "0"])
    users = [SimUser("admin@fs", "pw")]
    first, second = (box_settings(args, index, users) for index in (0, 1))
    assert (first.host, first.port, second.host, second.port) == ("127.0.0.1", 8021, "::1", 8022)
    assert (first.hostname, second.hostname) == ("fs", "fs-2")
    assert (first.seed, second.seed) == (7, 8)
    assert (first.core_uuid, second.core_uuid) == ("2a1b4c3d-0000-4000-8000-00000000c0de", None)
    assert first.password is None and first.users == users and not first.userauth_requires_domain
    assert (first.call_duration, first.queue_size, first.max_lost, first.keep_closed, first.record_limit) == (
        0.3, 10, 2, 5, 64)
    assert first.acl == ["127.0.0.0/8"] and first.version == "1.10.12-release" and first.heartbeat == 0
    defaults = box_settings(build_parser().parse_args([]), 0, [])
    assert (defaults.host, defaults.port, defaults.password, defaults.heartbeat) == ("127.0.0.1", 8021, "ClueCon", 20)


def test_cli_two_boxes_control_and_sigterm():
    proc = subprocess.Popen(_sim_exe() + [
        "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--control", "127.0.0.1:0",
        "--heartbeat", "0", "--hostname", "fakefs", "--core-uuid", "2a1b4c3d-0000-4000-8000-00000000c0de",
        "--user", "admin@fakefs:pw", "--user-api", "status"],
        stdout=subprocess.PIPE, text=True)
    try:
        ports: list[tuple[int, str]] = []
        control = None
        assert proc.stdout is not None  # a PIPE
        while len(ports) < 2 or control is None:
            line = proc.stdout.readline()
            assert line, "simulator exited"
            m = re.search(r"ESL on 127\.0\.0\.1:(\d+) \(Core-UUID ([0-9a-f-]+)\)", line)
            if m:
                ports.append((int(m.group(1)), m.group(2)))
            m = re.search(r"control on 127\.0\.0\.1:(\d+)", line)
            if m:
                control = int(m.group(1))
        assert ports[0][1] == "2a1b4c3d-0000-4000-8000-00000000c0de"
        assert ports[1][1] != ports[0][1]  # each box its own Core-UUID
        c1 = EslTestClient(ports[0][0]).login()
        c2 = EslTestClient(ports[1][0])
        c2.frame()
        r = c2.cmd("userauth admin@fakefs:pw")
        assert r.header("Reply-Text") == "+OK accepted" and r.header("Allowed-API") == "status"
        state = Control(control)({"op": "state"})
        assert [len(b["conns"]) for b in state["boxes"]] == [1, 1]
        assert [b["hostname"] for b in state["boxes"]] == ["fakefs", "fakefs-2"]
        proc.send_signal(signal.SIGTERM)
        notice = b"Content-Type: text/disconnect-notice\nContent-Length: 31\n\nThe system is being shut down.\n"
        for c in (c1, c2):
            assert c.wait_eof(5) and [f.raw for f in c.frames] == [notice]
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_rate_api_log_and_per_connection_stall(boxes):
    a, b, ctl = boxes
    c = EslTestClient(b.port).login()
    c.cmd("event json CUSTOM sim::load")
    c.cmd("log 7")
    assert ctl({"op": "rate", "per_second": 2000, "listen": b.address}) == {"ok": True}
    frames = c.collect(0.5)
    assert ctl({"op": "rate", "per_second": 0, "listen": b.address}) == {"ok": True}
    seqs = [int(json.loads(f.content)["Event-Sequence"]) for f in frames]
    assert len(seqs) >= 300 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    c.collect(0.05)
    out = ctl({"op": "api", "command": "originate loopback/9664 &park", "listen": b.address})
    assert out["ok"] and out["outputs"][0].startswith("+OK ")
    assert ctl({"op": "api", "command": "hupall", "listen": b.address})["outputs"] == [
        "+OK hangup all channels with cause MANAGER_REQUEST\n"]
    assert ctl({"op": "log", "level": "INFO", "text": "hello", "listen": b.address}) == {"ok": True, "sent": 1}
    assert c.frame().content.endswith(b"[INFO] mod_commands.c:7247 hello\n")
    # stall only this connection: its replies wait, another connection is served
    d = EslTestClient(b.port).login()
    stall = 0.5
    assert ctl({"op": "stall", "seconds": stall, "conn": 1, "listen": b.address}) == {"ok": True}
    c.send(b"api version\n\n")
    assert d.cmd("api version").content_type == "api/response"
    assert c.collect(stall / 2.5) == []  # well inside the stall
    assert c.frame(3).content_type == "api/response"
    assert ctl({"op": "stall", "seconds": 1, "conn": 9, "listen": b.address})["ok"] is False

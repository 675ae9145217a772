"""Replay the real-FreeSWITCH recordings (golden/freeswitch/*.json) against
the simulator and compare every frame the client receives (headers, order,
body bytes), masking only what varies from run to run (tests/golden/README.md,
"Fields that vary between runs").

The client's ``send`` chunks are replayed as recorded (same chunking); the
frames expected after each recorded ``recv`` are read and compared. Time is
compressed: HEARTBEATs are fired when the recording shows one arriving, and
one is fired in every recorded pause longer than a heartbeat interval (so a
connection that must not get it — nixed, noevents, not subscribed — is
checked); a shutdown notice nobody asked for (SIGTERM) is produced with
``box.shutdown()``.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import gevent
import pytest

from opensips_fs.sim import FsSimulator, SimSettings, SimUser
from support.golden import golden_dir
from support.esl_client import EslTestClient, Frame

GOLDEN = golden_dir("freeswitch")  # in-repo recordings; a missing folder fails

CALL_SCENARIOS = {"40_originate_loopback", "41_originate_api_sync_plain", "42_myevents"}
SCENARIOS = sorted(p.stem for p in GOLDEN.glob("*.json") if p.stem not in CALL_SCENARIOS)

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DIGITS_RE = re.compile(r"\d+")
DATE_RE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
EPOCH_RE = re.compile(r'(?<="created_epoch":")\d{10}')
UNITS_RE = re.compile(r"(\d+) (year|day|hour|minute|second|millisecond|microsecond)s?\b")
LOG_PREFIX_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} \d+\.\d\d% ")

# header values that vary from run to run (tests/golden/README.md, "Fields that vary between runs")
MASKED = {
    "Event-Date-Local", "Event-Date-GMT", "Event-Date-Timestamp", "Event-Sequence",
    "Core-UUID", "Up-Time", "Uptime-msec", "Idle-CPU", "Session-Count",
    "Session-Per-Sec-Last", "Session-Per-Sec-Max", "Session-Per-Sec-FiveMin",
    "Session-Since-Startup", "Session-Peak-Max", "Session-Peak-FiveMin", "Task-Runtime",
}
SHUTDOWN_TEXT = "The system is being shut down.\n"


def golden_user():
    return SimUser("esluser@127.0.0.1", "eslpass", events="HEARTBEAT CHANNEL_CREATE CUSTOM",
                   api="status,show", log=False)


def golden_box(**kw):
    """A simulator configured like the recorded FreeSWITCH
    (tests/golden/README.md, "FreeSWITCH set-up")."""
    opts: dict[str, Any] = dict(port=0, heartbeat=0, hostname="vm", ipv4="192.0.2.2", ipv6="fd00::2",
                                max_sessions=100, users=[golden_user()], shutdown_delay=0.2)
    opts.update(kw)
    return FsSimulator(SimSettings(**opts))


def mask_text(text: str) -> tuple[str, bool]:
    """Mask uuids; digit-mask api status/uptime outputs. Returns (text, digits_masked)."""
    text = UUID_RE.sub("<uuid>", text)
    text = DATE_RE.sub("<date>", EPOCH_RE.sub("<epoch>", text))
    if text.startswith("UP ") or re.fullmatch(r"\d+\n", text):
        text = UNITS_RE.sub(r"\1 \2", text)  # "1 second" vs "2 seconds"
        return DIGITS_RE.sub("N", text), True
    return text, False


def _pairs_plain(text: str):
    head, _, rest = text.partition("\n\n")
    pairs = [tuple(line.split(": ", 1)) if ": " in line else (line, "") for line in head.split("\n") if line]
    return pairs, rest


def normalize_event_pairs(pairs, body):
    out = []
    digit_masked = False
    if body is not None:
        body, digit_masked = mask_text(body)
    for k, v in pairs:
        if k in MASKED or (k == "Content-Length" and digit_masked):
            v = "*"
        else:
            v = UUID_RE.sub("<uuid>", v)
        out.append((k, v))
    return out, body


def normalize(content_type: str | None, header_block: str, body: str | None):
    """A comparable form of one frame."""
    lines = [line for line in header_block.split("\n") if line]
    headers = [tuple(line.split(": ", 1)) if ": " in line else (line.rstrip(":"), "") for line in lines]
    body_norm: object = body
    event_like = content_type and (content_type.startswith("text/event-") or content_type == "log/data")
    digit_masked = False
    if content_type == "text/event-json" and body is not None:
        pairs = json.loads(body, object_pairs_hook=list)
        inner = None
        if pairs and pairs[-1][0] == "_body":
            inner = pairs.pop()[1]
        pairs, inner = normalize_event_pairs(pairs, inner)
        body_norm = (pairs, inner)
    elif content_type == "text/event-plain" and body is not None:
        pairs, rest = _pairs_plain(body)
        inner = rest if any(k == "Content-Length" for k, _ in pairs[-1:]) else None
        pairs, inner = normalize_event_pairs(pairs, inner)
        body_norm = (pairs, inner, rest if inner is None else None)
    elif content_type == "text/event-xml" and body is not None:
        pairs = re.findall(r"^    <([^>]+)>(.*)</\1>$", body, re.M)
        pairs, _ = normalize_event_pairs(pairs, None)
        body_norm = (pairs, re.sub(r"(?m)^    <.*$\n", "", body))
    elif content_type == "log/data" and body is not None:
        body_norm = LOG_PREFIX_RE.sub("<stamp> ", body)
    elif body is not None:
        body_norm, digit_masked = mask_text(body)
    out_headers = []
    for k, v in headers:
        if k == "Content-Length" and (event_like or digit_masked):
            v = "*"
        out_headers.append((k, UUID_RE.sub("<uuid>", v)))
    return out_headers, body_norm


def recorded_body(frame: dict):
    if frame.get("body_abbreviated"):
        return None
    return frame["body"] if frame.get("content_length") is not None else None


def compare(ours: Frame, rec: dict, where: str) -> None:
    ctype = ours.content_type
    length = ours.header("Content-Length")
    if length is not None:
        assert int(length) == len(ours.content), where + ": our Content-Length is wrong"
    our_text = ours.body.decode("utf-8", "surrogateescape") if ours.body is not None else None
    if rec.get("body_abbreviated"):
        head, tail = rec["body_head"], rec["body_tail"]
        assert ctype is not None and our_text is not None, where
        assert ours.header_block.decode() == rec["header_block"] or ctype.startswith("text/event-"), where
        assert our_text.startswith(UUID_RE.sub(lambda m: our_text[m.start():m.end()], head)), where + " head"
        assert our_text.endswith(tail), where + " tail"
        if not ctype.startswith("text/event-"):
            assert len(ours.content) == rec["content_length"], where
        return
    want = normalize(dict(rec["headers"]).get("Content-Type"), rec["header_block"], recorded_body(rec))
    got = normalize(ctype, ours.header_block.decode("utf-8", "surrogateescape"), our_text)
    assert got == want, "%s\n ours: %r\n real: %r" % (where, got, want)


def abbreviated_send(scenario: str, entry: dict) -> bytes:
    """Rebuild the few >64 KiB client sends the recording abbreviates."""
    if scenario == "23_api_large_response":
        data = b"api echo " + (b"0123456789abcdef" * 12500)[:200000] + b"\n\n"
    elif scenario == "53_garbage":
        data = b"api echo " + b"x" * 65536 + b"\n\n"
    elif scenario == "60_large_event":
        data = (b"sendevent CUSTOM\nEvent-Subclass: esl::big\nX-Big: " + b"H" * 100000 +
                b"\nContent-Length: 200000\n\n" + (b"L" * 99 + b"\n") * 2000 + b"\n\n")
    else:
        raise AssertionError("no rebuild for %s" % scenario)
    assert len(data) == entry["len"]
    assert data.startswith(entry["text_head"].encode()) and data.endswith(entry["text_tail"].encode())
    return data


def frame_event_info(rec: dict):
    """(Event-Name, Event-Sequence) of a recorded event frame, else (None, None)."""
    body = rec.get("body") or rec.get("body_head") or ""
    ctype = dict(rec["headers"]).get("Content-Type", "")
    if ctype == "text/event-json":
        name = re.search(r'"Event-Name":"([^"]*)"', body)
        seq = re.search(r'"Event-Sequence":"(\d+)"', body)
    elif ctype in ("text/event-plain", "text/event-xml"):
        name = re.search(r"Event-Name(?::\s|>)([^\n<]*)", body)
        seq = re.search(r"Event-Sequence(?::\s|>)(\d+)", body)
    else:
        return None, None
    return (name.group(1) if name else None), (seq.group(1) if seq else None)


def describe_event(content_type: str, body: str):
    """(leg, Event-Name, states, header names) of an event, for call scenarios
    whose values (uuids, times) differ but whose shape must not."""
    if content_type == "text/event-json":
        pairs = json.loads(body, object_pairs_hook=list)
    else:
        pairs = _pairs_plain(body)[0]
    values = dict(pairs)
    channel = values.get("Channel-Name", "")
    leg = "A" if channel.endswith("-a") else "B" if channel.endswith("-b") else "A"
    return leg, (values.get("Event-Name"), channel, values.get("Channel-State"),
                 values.get("Channel-Call-State"), values.get("Answer-State"),
                 values.get("Hangup-Cause"), [k for k, _ in pairs])


def per_leg(items):
    legs: dict = {}
    for leg, desc in items:
        legs.setdefault(leg, []).append(desc)
    return legs


def replay(scenario: str, box: FsSimulator, loose_events: bool = False) -> dict:
    data = json.loads((GOLDEN / (scenario + ".json")).read_text())
    Replay(scenario, data, box, loose_events).run()
    return data


class Replay:
    """Play a recording's client side against the simulator; compare every
    frame it sends back with the recorded one."""

    def __init__(self, scenario: str, data: dict, box: FsSimulator, loose_events: bool):
        self.scenario = scenario
        self.data = data
        self.box = box
        self.loose_events = loose_events
        self.frames_by_conn: dict[str, list] = {}
        for f in data["frames"]:
            self.frames_by_conn.setdefault(f["conn"], []).append(f)
        self.ends_by_conn = {}
        for conn, frames in self.frames_by_conn.items():
            total, ends = 0, []
            for f in frames:
                total += len(f["header_block"].encode()) + (f["content_length"] or 0)
                ends.append(total)
            self.ends_by_conn[conn] = ends
        self.clients: dict[str, EslTestClient] = {}
        self.received = {c: 0 for c in self.frames_by_conn}  # bytes recorded as received
        self.consumed = {c: 0 for c in self.frames_by_conn}  # frames compared
        self.fired_beats: set = set()
        self.loose: dict = {}
        self.shutdown_started = False
        self.beats = sorted((f["t"], frame_event_info(f)[1]) for f in data["frames"]
                            if frame_event_info(f)[0] == "HEARTBEAT")

    def run(self) -> None:
        last_t = 0.0
        for index, entry in enumerate(self.data["wire"]):
            conn, kind = entry["conn"], entry["dir"]
            for t, seq in self.beats:
                if t <= entry["t"] + 0.001 and seq not in self.fired_beats:
                    self.fired_beats.add(seq)
                    self.box.fire_heartbeat()
            if entry["t"] - last_t > 1.2:
                self.box.fire_heartbeat()  # a pause the real server filled with heartbeats
                gevent.sleep(0.05)
            last_t = entry["t"]
            where = "%s step %d (%s %s)" % (self.scenario, index, conn, kind)
            self.step(entry, where)
        for conn, frames in self.frames_by_conn.items():
            assert self.consumed[conn] == len(frames), "%s: %s compared %d of %d frames" % (
                self.scenario, conn, self.consumed[conn], len(frames))
        self.check_loose()

    def step(self, entry: dict, where: str) -> None:
        conn, kind = entry["conn"], entry["dir"]
        clients = self.clients
        if kind == "connect":
            clients[conn] = EslTestClient(self.box.port)
        elif kind == "send":
            raw = base64.b64decode(entry["b64"]) if "b64" in entry else abbreviated_send(self.scenario, entry)
            clients[conn].send(raw)
        elif kind == "recv":
            self.received[conn] += entry["len"]
            self.compare_received(conn, where)
        elif kind == "eof":
            assert clients[conn].wait_eof(3), where + ": the simulator did not close"
        elif kind == "close":
            extra = clients[conn].collect(0.05) if not clients[conn].eof else clients[conn].frames
            assert extra == [], "%s: unexpected frames %r" % (where, extra)
            clients[conn].close()

    def compare_received(self, conn: str, where: str) -> None:
        """Compare every recorded frame that the bytes received so far complete."""
        ends = self.ends_by_conn[conn]
        consumed = self.consumed
        box = self.box
        while consumed[conn] < len(ends) and ends[consumed[conn]] <= self.received[conn]:
            rec = self.frames_by_conn[conn][consumed[conn]]
            name, seq = frame_event_info(rec)
            if name == "HEARTBEAT" and seq not in self.fired_beats:
                self.fired_beats.add(seq)
                box.fire_heartbeat()
            if (rec.get("body") == SHUTDOWN_TEXT and not self.shutdown_started
                    and not box.shutting_down):
                self.shutdown_started = True
                gevent.spawn(box.shutdown)
            ours = self.clients[conn].frame(timeout=5)
            rec_type = dict(rec["headers"]).get("Content-Type", "")
            if self.loose_events and rec_type.startswith("text/event-"):
                assert ours.content_type == rec_type, where
                self.loose.setdefault(conn, ([], []))
                self.loose[conn][0].append(describe_event(rec_type, ours.content.decode()))
                self.loose[conn][1].append(describe_event(rec_type, rec["body"]))
            else:
                compare(ours, rec, "%s frame %d" % (where, consumed[conn]))
            consumed[conn] += 1

    def check_loose(self) -> None:
        """Loosely compared events: per leg, the same order, states and header names."""
        scenario = self.scenario
        for conn, (ours, real) in self.loose.items():
            got, want = per_leg(ours), per_leg(real)
            assert got.keys() == want.keys(), (scenario, conn)
            for leg in want:
                assert [d[:6] for d in got[leg]] == [d[:6] for d in want[leg]], (scenario, conn, leg)
                for g, w in zip(got[leg], want[leg]):
                    assert g[6] == w[6], "%s %s leg %s %s: header names differ\n ours: %s\n real: %s" % (
                        scenario, conn, leg, w[0], g[6], w[6])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_replay(scenario):
    box = golden_box().start()
    try:
        replay(scenario, box)
    finally:
        box.stop()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scenario", sorted(CALL_SCENARIOS))
def test_replay_calls(scenario):
    """Call scenarios: replies compared exactly (masked), events per leg by
    order, states and header names."""
    box = golden_box().start()
    try:
        replay(scenario, box, loose_events=True)
    finally:
        box.stop()


def test_every_scenario_is_replayed_somewhere():
    names = {p.stem for p in GOLDEN.glob("*.json")}
    assert set(SCENARIOS) | CALL_SCENARIOS == names

"""Sans-IO ESL framing (opensips_fs.esl.protocol), driven by the byte streams
recorded from real FreeSWITCH 1.11 (tests/golden/freeswitch/)."""

from __future__ import annotations

import base64
import json
import random

import pytest

from opensips_fs.esl import protocol
from opensips_fs.esl.protocol import Frame, FrameParser, ProtocolError, event_name

from support import golden

GOLDEN = golden.golden_dir("freeswitch")


def _chunk_bytes(entry: dict) -> bytes | None:
    if "b64" in entry:
        return base64.b64decode(entry["b64"])
    if entry.get("text_is_exact_utf8"):
        return entry["text"].encode("utf-8")
    return None


def _large_api_stream(record: dict) -> bytes | None:
    """23_api_large_response keeps only the head and tail of its 200 000-byte
    body; the body is `0123456789abcdef` repeated, which the recorded head,
    tail and lengths confirm, so the exact stream can be rebuilt."""
    recv = [e for e in record["wire"] if e["dir"] == "recv"]
    parts = []
    for entry in recv:
        data = _chunk_bytes(entry)
        if data is None:
            break
        parts.append(data)
    head = b"Content-Type: api/response\nContent-Length: 200000\n\n"
    body = b"0123456789abcdef" * 12500
    stream = b"".join(parts) + head + body
    if sum(e["len"] for e in recv) != len(stream):
        return None
    big = recv[len(parts)]
    if not stream[len(b"".join(parts)):].startswith(big["text_head"].encode()):
        return None
    if not stream.endswith(recv[-1]["text_tail"].encode()):
        return None
    return stream


def golden_streams():
    """(file, conn, stream bytes, expected frames) for every recorded
    connection whose received bytes are stored exactly."""
    out = []
    for path in sorted(GOLDEN.glob("*.json")):
        record = json.loads(path.read_text())
        conns = dict.fromkeys(e["conn"] for e in record["wire"])
        for conn in conns:
            recv = [e for e in record["wire"] if e["conn"] == conn and e["dir"] == "recv"]
            chunks = [_chunk_bytes(e) for e in recv]
            if None in chunks:
                if path.name.startswith("23_"):
                    stream = _large_api_stream(record)
                    if stream is None:
                        continue
                    chunks = [stream]
                else:
                    continue
            frames = [f for f in record["frames"] if f["conn"] == conn]
            if not chunks:
                continue
            out.append((path.name, conn, chunks, frames))
    return out


GOLDEN_STREAMS = golden_streams()


def test_golden_corpus_is_there():
    assert len(GOLDEN_STREAMS) >= 40
    assert sum(len(f) for _, _, _, f in GOLDEN_STREAMS) >= 200


def _check(frames: list[Frame], expected: list[dict], label: str) -> None:
    assert len(frames) == len(expected), label
    for got, want in zip(frames, expected):
        assert got.headers == [tuple(h) for h in want["headers"]], label
        assert got.content_type == dict((k.lower(), v) for k, v in reversed(want["headers"])).get("content-type")
        if want["content_length"] is None:
            assert got.body is None, label
        else:
            assert isinstance(got.body, bytes)
            assert len(got.body) == want["body_len"] == want["content_length"], label
            if want.get("body_abbreviated"):
                assert got.body.startswith(want["body_head"].encode("utf-8"))
                assert got.body.endswith(want["body_tail"].encode("utf-8"))
            else:
                assert got.body.decode("utf-8", "replace") == want["body"], label


def _feed_all(parser: FrameParser, pieces) -> list[Frame]:
    frames = []
    for piece in pieces:
        frames.extend(parser.feed(piece))
    return frames


@pytest.mark.parametrize("name,conn,chunks,expected", GOLDEN_STREAMS,
                         ids=[f"{n}:{c}" for n, c, _, _ in GOLDEN_STREAMS])
def test_golden_stream_as_recorded(name, conn, chunks, expected):
    parser = FrameParser()
    _check(_feed_all(parser, chunks), expected, f"{name}:{conn}")
    assert parser.buffered == 0 and not parser.in_frame


@pytest.mark.parametrize("name,conn,chunks,expected", GOLDEN_STREAMS,
                         ids=[f"{n}:{c}" for n, c, _, _ in GOLDEN_STREAMS])
def test_golden_stream_one_byte_at_a_time(name, conn, chunks, expected):
    """Every byte boundary is a read boundary at once."""
    stream = b"".join(chunks)
    parser = FrameParser()
    frames = []
    for i in range(len(stream)):
        frames.extend(parser.feed(stream[i:i + 1]))
    _check(frames, expected, f"{name}:{conn}")


def _split_points(stream: bytes, expected: list[dict]) -> range | list[int]:
    """Every offset for small streams; for big ones every offset within 40
    bytes of a frame edge (header start, blank line, body end) plus a stride."""
    if len(stream) <= 24_000:
        return range(len(stream) + 1)
    points = set(range(0, len(stream) + 1, 997))
    pos = 0
    for frame in expected:
        head = len(frame["header_block"].encode("utf-8"))
        for edge in (pos, pos + head - 2, pos + head, pos + head + frame["body_len"]):
            points.update(range(max(0, edge - 40), min(len(stream), edge + 40) + 1))
        pos += head + frame["body_len"]
    return sorted(points)


@pytest.mark.parametrize("name,conn,chunks,expected", GOLDEN_STREAMS,
                         ids=[f"{n}:{c}" for n, c, _, _ in GOLDEN_STREAMS])
def test_golden_stream_split_in_two_everywhere(name, conn, chunks, expected):
    stream = b"".join(chunks)
    for cut in _split_points(stream, expected):
        parser = FrameParser()
        first = parser.feed(stream[:cut])
        frames = first + parser.feed(stream[cut:])
        _check(frames, expected, f"{name}:{conn} cut at {cut}")
        # a frame is handed out as soon as its last byte is in
        complete = _complete_before(cut, expected)
        assert len(first) == complete, f"{name}:{conn} cut at {cut}"


def _complete_before(cut: int, expected: list[dict]) -> int:
    pos = 0
    done = 0
    for frame in expected:
        pos += len(frame["header_block"].encode("utf-8")) + frame["body_len"]
        if pos <= cut:
            done += 1
    return done


@pytest.mark.parametrize("seed", range(20))
def test_golden_streams_concatenated_random_chunks(seed):
    """All recorded connections back to back, cut into random chunk sizes."""
    rnd = random.Random(seed)
    stream = b"".join(b"".join(c) for _, _, c, _ in GOLDEN_STREAMS)
    expected = [f for _, _, _, fr in GOLDEN_STREAMS for f in fr]
    pieces = []
    pos = 0
    while pos < len(stream):
        size = rnd.choice((1, 2, 3, 7, 60, 512, 4096, 65536, 300_000))
        pieces.append(stream[pos:pos + size])
        pos += size
    parser = FrameParser()
    _check(_feed_all(parser, pieces), expected, f"seed {seed}")


# ---------------------------------------------------------------------------
# Big and non-ASCII bodies

def _big_sendevent_body(x_big: int, body: int) -> bytes:
    """A sendevent event shaped like the recorded 300 KB one
    (60_large_event.json): client headers first, `Event-Name` after a
    100 KB header, a 200 KB `_body` with multi-byte UTF-8."""
    line = "é€😀 LLLL\n"
    text = (line * (body // len(line.encode()) + 1)).encode()[:body].decode("utf-8", "ignore")
    obj = {
        "Event-Subclass": "esl::big",
        "Command": "sendevent CUSTOM",
        "X-Big": "H" * x_big,
        "Content-Length": str(len(text.encode())),
        "Event-UUID": "b0c5bd1e-9a8e-4f7b-8c3e-1c4b2e7d9f00",
        "Event-Name": "CUSTOM",
        "Core-UUID": "789d7f5f-0958-486a-8f04-94d9ffeded91",
        "Event-Sequence": "1326",
        "_body": text,
    }
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _event_frame(body: bytes) -> bytes:
    return b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(body) + body


def test_300kb_utf8_event_any_chunking():
    body = _big_sendevent_body(100_000, 200_000)
    assert len(body) > 300_000 and len(body) != len(body.decode("utf-8"))
    heartbeat = json.loads((GOLDEN / "10_event_json_subset_heartbeat.json").read_text())
    hb_body = heartbeat["observations"]["heartbeat_body_text"].encode()
    stream = _event_frame(hb_body) + _event_frame(body) + _event_frame(hb_body)
    for size in (1 << 16, 4096, 1000, 131_072, 7, len(stream)):
        parser = FrameParser()
        pieces = [stream[i:i + size] for i in range(0, len(stream), size)]
        if size == 7:
            pieces = pieces[:200] + [b"".join(pieces[200:-200])] + pieces[-200:]
        frames = _feed_all(parser, pieces)
        assert [f.body for f in frames] == [hb_body, body, hb_body]
        assert [event_name(f.body or b"") for f in frames] == ["HEARTBEAT", "CUSTOM", "HEARTBEAT"]


def test_utf8_body_length_is_bytes_not_characters():
    body = '{"Event-Name":"CUSTOM","x":"héllo wörld €"}'.encode()
    tail = b"Content-Type: command/reply\nReply-Text: +OK\n\n"
    frames = FrameParser().feed(_event_frame(body) + tail)
    assert frames[0].body == body
    assert frames[1].reply_text == "+OK"


def test_body_cap_is_configurable_and_inclusive():
    parser = FrameParser(max_body=10)
    frames = parser.feed(b"Content-Type: api/response\nContent-Length: 10\n\n0123456789")
    assert frames[0].body == b"0123456789" and frames[0].oversize == 0
    frames = FrameParser(max_body=10).feed(b"Content-Type: api/response\nContent-Length: 11\n\n01234567890")
    assert frames[0].body is None and frames[0].oversize == 11


@pytest.mark.parametrize("cut", [1, 7, 4096, None])
def test_oversized_body_is_read_through_without_being_held(cut):
    """A body over the cap is counted off the stream, not buffered, and the
    frames after it come out intact, however the bytes are cut."""
    big = b"x" * 100_000
    stream = (b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(big) + big
              + b"Content-Type: api/response\nContent-Length: 5000\n\n" + b"y" * 5000
              + _event_frame(b'{"Event-Name":"DTMF"}'))
    parser = FrameParser(max_body=4096)
    frames = []
    step = cut or len(stream)
    for i in range(0, len(stream), step):
        frames += parser.feed(stream[i:i + step])
    assert [(f.content_type, f.body, f.oversize) for f in frames] == [
        ("text/event-json", None, 100_000), ("api/response", None, 5000),
        ("text/event-json", b'{"Event-Name":"DTMF"}', 0)]
    assert not parser.in_frame


def test_oversized_body_costs_no_memory():
    import tracemalloc

    parser = FrameParser(max_body=64 * 1024)
    chunk = b"z" * 65536
    tracemalloc.start()
    try:
        assert parser.feed(b"Content-Type: api/response\nContent-Length: %d\n\n" % (300 * len(chunk))) == []
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(299):
            assert parser.feed(chunk) == []
        frames = parser.feed(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert frames[0].oversize == 300 * len(chunk) and frames[0].body is None
    assert peak - base < 256 * 1024  # the 19 MiB body was never held


def test_default_cap_is_4_mib():
    parser = FrameParser()
    assert parser.max_body == 4 * 1024 * 1024
    assert parser.feed(b"Content-Length: 4194304\nContent-Type: text/event-json\n\n{") == []
    assert parser.buffered == 1 and parser.in_frame


@pytest.mark.parametrize("value", [b"-1", b"-0", b"+5", b" ", b"", b"12a", b"0x10", b"1_0", b"\xd9\xa3",
                                   b"1.5", b"99999999999999999999999999"])
def test_bad_content_length_is_a_protocol_error(value):
    for head in (b"Content-Length: %s\nContent-Type: text/event-json\n\n",
                 b"Content-Type: api/response\nContent-Length: %s\n\n"):
        parser = FrameParser()
        with pytest.raises(ProtocolError):
            parser.feed(head % value + b"xxxx")
        with pytest.raises(ProtocolError):  # a failed parser stays failed
            parser.feed(b"Content-Type: command/reply\n\n")


def test_bad_content_length_split_across_reads_still_detected():
    stream = b"Content-Type: command/reply\nReply-Text: +OK\n\nContent-Length: -5\nContent-Type: text/event-json\n\n"
    parser = FrameParser()
    frames = []
    with pytest.raises(ProtocolError):
        for i in range(len(stream)):
            frames.extend(parser.feed(stream[i:i + 1]))
    assert [f.reply_text for f in frames] == ["+OK"]


def test_conflicting_content_lengths_rejected():
    with pytest.raises(ProtocolError):
        FrameParser().feed(b"Content-Type: api/response\nContent-Length: 2\nContent-Length: 3\n\nabc")


def test_endless_header_block_is_bounded():
    parser = FrameParser(max_header=1000)
    parser.feed(b"Content-Type: x\n" + b"a" * 500)
    with pytest.raises(ProtocolError, match="header block"):
        for _ in range(10):
            parser.feed(b"b" * 100)


def test_garbage_without_colons_gives_headerless_frames_not_a_crash():
    frames = FrameParser().feed(b"\x00\x01garbage\xff\n\nContent-Type: command/reply\nReply-Text: +OK\n\n")
    assert frames[0].headers == [] and frames[0].content_type is None
    assert frames[1].reply_text == "+OK"


def test_blank_lines_between_frames_are_skipped():
    frames = FrameParser().feed(b"\n\n\nContent-Type: command/reply\nReply-Text: +OK\n\n"
                                b"\nContent-Type: auth/request\n\n")
    assert [f.content_type for f in frames] == ["command/reply", "auth/request"]


def test_header_lookup_and_empty_values():
    frame = FrameParser().feed(b"Content-Type: log/data\nContent-Length: 2\nLog-Level: 7\nUser-Data: \n\nab")[0]
    assert frame.header("user-data") == ""
    assert frame.header("LOG-LEVEL") == "7"
    assert frame.header("missing") is None
    assert frame.body == b"ab"


def test_disconnect_notice_kinds():
    parser = FrameParser()
    frames = parser.feed(
        b"Content-Type: text/disconnect-notice\nContent-Length: 3\n\nbye"
        b"Content-Type: text/disconnect-notice\nContent-Disposition: linger\nContent-Length: 0\n\n"
        b"Content-Type: text/rude-rejection\nContent-Length: 24\n\nAccess Denied, go away.\n")
    assert [f.is_disconnect for f in frames] == [True, False, True]


def test_many_frames_in_one_read_all_returned_at_once():
    recording = json.loads((GOLDEN / "10_event_json_subset_heartbeat.json").read_text())
    hb = recording["observations"]["heartbeat_body_text"].encode()
    burst = _event_frame(hb) * 1000
    frames = FrameParser().feed(burst)
    assert len(frames) == 1000 and frames[-1].body == hb


def test_one_byte_feeding_is_linear():
    """A hostile peer trickling bytes cannot make the parser quadratic: a
    1 MB body fed in 1-byte reads keeps at most one copy of it."""
    body = b"x" * 1_000_000
    stream = b"Content-Type: api/response\nContent-Length: 1000000\n\n" + body
    parser = FrameParser()
    frames = []
    view = memoryview(stream)
    for i in range(0, len(stream), 1):
        frames.extend(parser.feed(view[i:i + 1].tobytes()))
    assert len(frames) == 1 and frames[0].body == body


# ---------------------------------------------------------------------------
# event_name

def test_event_name_of_every_recorded_json_event():
    seen = set()
    for _, _, _, frames in GOLDEN_STREAMS:
        for frame in frames:
            headers = dict(frame["headers"])
            if headers.get("Content-Type") != "text/event-json" or frame.get("body_abbreviated"):
                continue
            body = frame["body"].encode("utf-8")
            assert event_name(body) == json.loads(body)["Event-Name"]
            seen.add(event_name(body))
    assert {"HEARTBEAT", "CUSTOM", "CHANNEL_CREATE", "BACKGROUND_JOB"} <= seen


def test_event_name_sendevent_order_and_traps():
    assert event_name(b'{"Event-Subclass":"a::b","Command":"sendevent CUSTOM","Event-Name":"CUSTOM"}') == "CUSTOM"
    # the key text inside a value is not the key
    trap = json.dumps({"X": '"Event-Name":"FAKE"', "Y": ',"Event-Name":"FAKE2"', "Event-Name": "REAL"},
                      separators=(",", ":")).encode()
    assert event_name(trap) == "REAL"
    assert event_name(b'{"X":"a\\\\","Event-Name":"AFTER_BACKSLASH"}') == "AFTER_BACKSLASH"
    assert event_name(b'{"Event-Name":"A\\"B"}') == 'A"B'
    assert event_name(b'{ "Event-Name" : "SPACED" }') == "SPACED"
    assert event_name('{"Event-Name":"ÉVÉNEMENT"}'.encode()) == "ÉVÉNEMENT"


@pytest.mark.parametrize("body", [
    b"", b"not json", b"{}", b'{"Event-Name":123}', b'{"Event-Name":""}', b'{"Event-Name":null}',
    b'{"Other":"x"}', b'{"X":"\\"Event-Name\\":\\"FAKE\\""}', b'{"Event-Name":"' + b"A" * 300 + b'"}',
    b'{"Event-Name":"unterminated', b'{"Event-Name":"\xff\xfe"}',
])
def test_event_name_missing_or_bad(body):
    assert event_name(body) is None


def test_event_name_scan_is_bounded_for_huge_names():
    body = b'{"Event-Name":"' + b"A" * 10_000_000
    assert event_name(body) is None


# ---------------------------------------------------------------------------
# Commands

def test_command_encoders():
    assert protocol.encode_command(protocol.auth_command("ClueCon")) == b"auth ClueCon\n\n"
    assert protocol.auth_command("p:w", "esluser@127.0.0.1") == "userauth esluser@127.0.0.1:p:w"
    assert protocol.encode_command(protocol.event_command("CHANNEL_ANSWER")) == b"event json CHANNEL_ANSWER\n\n"
    assert protocol.encode_command(protocol.nixevent_command("dtmf")) == b"nixevent dtmf\n\n"
    assert protocol.encode_command("bgapi status\nJob-UUID: x") == b"bgapi status\nJob-UUID: x\n\n"
    assert protocol.encode_command("api echo é") == "api echo é\n\n".encode()


@pytest.mark.parametrize("bad", ["", "A\nB", "A\r", "x\n\n"])
def test_command_encoders_refuse_line_breaks(bad):
    with pytest.raises(ValueError):
        protocol.event_command(bad)
    with pytest.raises(ValueError):
        protocol.auth_command(bad)


@pytest.mark.parametrize("text, kind", [
    ("", "empty"), (" \r\n", "empty"), ("api status\n\napi version", "empty line"),
    ("api status\n\r\nnixevent ALL", "empty line"), ("\napi status", "empty line"),
    ("api " + "x" * 60, "too long"),
])
def test_command_text_refuses_what_is_not_one_command(text, kind):
    with pytest.raises(protocol.CommandTextError) as err:
        protocol.command_text(text, max_bytes=32)
    assert err.value.kind == kind


def test_command_text_drops_only_the_terminator():
    assert protocol.command_text("bgapi status\nJob-UUID: x\r\n\r\n") == "bgapi status\nJob-UUID: x"
    assert [protocol.breaks_line(v) for v in ("DTMF", "", "A\rB", "A\n")] == [False, False, True, True]


# ---------------------------------------------------------------------------
# Property: any frames, any chunking

from hypothesis import given, settings, strategies as st  # noqa: E402

_header_names = st.sampled_from(["Content-Type", "Reply-Text", "Job-UUID", "X-Thing", "User-Data"])
_header_values = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=["Cs"]), max_size=30) \
    .map(lambda v: v.lstrip(" \t"))
_frames = st.lists(st.tuples(
    st.lists(st.tuples(_header_names, _header_values), max_size=4),
    st.one_of(st.none(), st.binary(max_size=3000)),
    st.booleans(),  # event-style header order
), min_size=1, max_size=12)


def _encode(headers, body, event_style):
    lines = [f"{k}: {v}" for k, v in headers]
    if body is not None:
        length = f"Content-Length: {len(body)}"
        lines = [length, "Content-Type: text/event-json"] + lines if event_style else lines + [length]
    if not lines:
        lines = ["Content-Type: command/reply"]
    return ("\n".join(lines) + "\n\n").encode() + (body or b"")


@settings(max_examples=200, deadline=None)
@given(_frames, st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=40))
def test_any_frames_any_chunking(frames, sizes):
    stream = b"".join(_encode(*f) for f in frames)
    pieces, pos, i = [], 0, 0
    while pos < len(stream):
        size = sizes[i % len(sizes)]
        pieces.append(stream[pos:pos + size])
        pos += size
        i += 1
    parser = FrameParser()
    got = _feed_all(parser, pieces)
    assert len(got) == len(frames)
    for frame, (headers, body, _) in zip(got, frames):
        assert frame.body == body
        for name, value in headers:
            assert (name, value) in frame.headers
    assert not parser.in_frame

"""The simulator's sans-IO command parser (docs/protocols/esl.md §1.2, §7), bytes only."""

import pytest
from hypothesis import given, settings, strategies as st

from opensips_fs.sim.commands import MAX_BODY, Command, CommandParser, ParseError


def feed_all(chunks):
    p = CommandParser()
    out = []
    for c in chunks:
        out += p.feed(c)
    return out


def test_simple_and_pipelined():
    out = feed_all([b"api uptime\n\nevent json HEARTBEAT\n\napi version\n\nnoevents\n\nbgapi status\n\n"])
    assert [c.line for c in out] == ["api uptime", "event json HEARTBEAT", "api version", "noevents", "bgapi status"]
    assert out[0].word == "api" and out[0].arg == "uptime"


def test_crlf_blank_lines_headers_and_no_colon():
    out = feed_all([b"\n\n\r\nauth ClueCon\r\n\r\n", b"bgapi status\nJob-UUID: foobar\nNoColonHere\n\n"])
    assert out[0].line == "auth ClueCon" and out[0].text == "auth ClueCon"
    assert out[1].headers == [("Job-UUID", "foobar")]
    assert out[1].header("job-uuid") == "foobar"
    assert out[1].text == "bgapi status\nJob-UUID: foobar\nNoColonHere"


def test_split_at_every_offset():
    data = b"sendevent CUSTOM\nEvent-Subclass: a::b\nContent-Length: 5\n\nhello\n\napi status\n\n"
    whole = feed_all([data])
    assert whole[0].body == b"hello" and whole[1].line == "api status"
    for i in range(len(data) + 1):
        got = feed_all([data[:i], data[i:]])
        assert [(c.line, c.headers, c.body) for c in got] == [(c.line, c.headers, c.body) for c in whole]


def test_no_terminator_waits():
    p = CommandParser()
    assert p.feed(b"api uptime\n") == []
    assert [c.line for c in p.feed(b"api uptime\n\n")] == ["api uptime"]  # the 2nd line is a header without ':'


def test_nul_first_byte_is_fatal():
    out = feed_all([b"\x00junk\n\napi status\n\n"])
    assert len(out) == 1 and isinstance(out[0], ParseError) and out[0].kind == "nul"


def test_nul_inside_a_line_ends_it():
    (cmd,) = feed_all([b"api echo ab\x00cd\n\n"])
    assert cmd.line == "api echo ab"


def test_bad_content_length_is_fatal():
    for value in (b"-1", b"999999999", str(MAX_BODY + 1).encode()):
        out = feed_all([b"api uptime\nContent-Length: " + value + b"\n\n"])
        assert [type(x) for x in out] == [ParseError] and out[0].kind == "content-length"
    (cmd,) = feed_all([b"api uptime\nContent-Length: abc\n\n"])  # atoi -> 0: no body
    assert cmd.body is None


def test_binary_junk_is_a_command():
    (cmd,) = feed_all([b"\x01\x02\xff\xfe garbage \x7f\n\n"])
    assert isinstance(cmd, Command) and cmd.line.startswith("\x01\x02")


def test_dead_after_error():
    p = CommandParser()
    p.feed(b"\x00\n\n")
    assert p.dead and p.feed(b"api status\n\n") == []


@pytest.mark.timeout(10)
def test_one_byte_at_a_time_is_linear():
    """A long command dribbled byte by byte: every byte is searched once
    (the LF search resumes where the previous one stopped)."""
    data = b"api echo " + b"x" * 300_000 + b"\n\n"
    p = CommandParser()
    out = []
    for i in range(len(data)):
        out += p.feed(data[i:i + 1])
        if i < 300_000:
            assert p._searched == len(p._buf)  # nothing left to rescan
    assert len(out) == 1 and len(out[0].line) == 300_009


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"api status", b"event json HEARTBEAT", b"auth x", b"bgapi echo hi"]),
                min_size=1, max_size=6),
       st.lists(st.integers(min_value=0, max_value=200), max_size=8), st.booleans())
def test_any_chunking_same_commands(commands, cuts, crlf):
    eol = b"\r\n" if crlf else b"\n"
    data = b"".join(c + eol + eol for c in commands)
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    assert [c.line for c in feed_all(chunks)] == [c.decode() for c in commands]

"""The sans-IO parts of MI, tested with bytes alone: JSON-RPC parsing
(jsonrpc.py), the HTTP request parser (httpwire.py), FIFO framing
(fifoframe.py)."""

from __future__ import annotations

import json
import random
import time

import pytest
from hypothesis import given, settings, strategies as st

from opensips_fs.mi.fifoframe import FifoParser, FifoRejected, FifoRequest
from opensips_fs.mi.httpwire import (CONTINUE, NEED_DATA, HttpError, HttpRequest, ParseEvent, RequestParser,
                                     encode_response)
from support.mi import build_registry
from opensips_fs.mi.jsonrpc import (
    INVALID_REQUEST_NULL_ID, NOTIFICATION, PARSE_ERROR_REPLY, RequestError, encode_error, encode_success,
    parse_request,
)

# -- jsonrpc -----------------------------------------------------------------------

INVALID_REQUEST = b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":'  # + the id


@pytest.mark.parametrize("body, method, params, request_id", [
    (b'{"jsonrpc":"2.0","method":"m","id":1}', "m", None, 1),
    (b'{"jsonrpc":"2.0","method":"m","params":{},"id":"1"}', "m", None, "1"),
    (b'{"jsonrpc":"2.0","method":"m","params":[],"id":null}', "m", None, None),
    (b'{"jsonrpc":"2.0","method":"m","params":[1]}', "m", [1], NOTIFICATION),
    (b'  {"id":-3,"method":"m","jsonrpc":"2.0"}  ', "m", None, -3),
    (b'{"jsonrpc":"2.0","method":"m","id":1.9}', "m", None, 1),
    (b'{"jsonrpc":"2.0","method":"m","id":-1.9}', "m", None, -1),
    (b'{"jsonrpc":"2.0","method":"m","id":99999999999}', "m", None, 2147483647),
    (b'{"jsonrpc":"2.0","method":"m","id":-99999999999}', "m", None, -2147483648),
    (b'{"jsonrpc":"2.0","method":"m","id":1e999}', "m", None, 2147483647),
    (b'{"jsonrpc":"2.0","method":"m","id":' + b"9" * 5000 + b"}", "m", None, 2147483647),
    (b'{"JSONRPC":"2.0","Method":"m","Params":[2],"ID":4}', "m", [2], 4),
    (b'{"jsonrpc":"2.0","method":"first","method":"second","id":1}', "first", None, 1),
    (b'{"jsonrpc":"2.0","method":"m","id":1}{"x":1}', "m", None, 1),
    (b'{"jsonrpc":"2.0","method":"m","id":1} trailing garbage', "m", None, 1),
    (b'\x01{\x02"jsonrpc"\x03:"2.0",\x1f"method":"m","id":1}', "m", None, 1),
    (b'{"jsonrpc":"2.0","method":"a\x01b","id":1}', "a\x01b", None, 1),
    (b'{"jsonrpc":"2.0","method":"m\\u0000x","id":"i\\u0000d"}', "m", None, "i"),
])
def test_parse_valid(body, method, params, request_id):
    request = parse_request(body)
    assert (request.method, request.params, request.id) == (method, params, request_id)


@pytest.mark.parametrize("body, reply", [
    (b"", PARSE_ERROR_REPLY),
    (b"   ", PARSE_ERROR_REPLY),
    (b'{"jsonrpc":"2.0","method":"m","id":1', PARSE_ERROR_REPLY),
    (b'{"jsonrpc":"2.0","method":"m","id":NaN}', PARSE_ERROR_REPLY),
    (b'{"jsonrpc":"2.0","method":"m","id":Infinity}', PARSE_ERROR_REPLY),
    (b"[" * 50000, PARSE_ERROR_REPLY),
    (b"[]", INVALID_REQUEST_NULL_ID),
    (b'[{"jsonrpc":"2.0","method":"m","id":1}]', INVALID_REQUEST_NULL_ID),
    (b'"str"', INVALID_REQUEST_NULL_ID),
    (b'{"jsonrpc":"2.0","method":"m","id":{}}', INVALID_REQUEST_NULL_ID),
    (b'{"jsonrpc":"2.0","method":"m","id":[1]}', INVALID_REQUEST_NULL_ID),
    (b'{"jsonrpc":"2.0","method":"m","id":false}', INVALID_REQUEST_NULL_ID),
    (b'{"jsonrpc":"1.0","method":"m"}', INVALID_REQUEST_NULL_ID),
    (b'{"jsonrpc":"1.0","method":"m","id":8}',
     INVALID_REQUEST + b'8}'),
    (b'{"jsonrpc":2.0,"method":"m","id":"a"}',
     INVALID_REQUEST + b'"a"}'),
    (b'{"method":"m","id":9}',
     INVALID_REQUEST + b'9}'),
    (b'{"jsonrpc":"2.0","id":10}',
     INVALID_REQUEST + b'10}'),
    (b'{"jsonrpc":"2.0","method":5,"id":11}',
     INVALID_REQUEST + b'11}'),
    (b'{"jsonrpc":"2.0","method":"m","params":"x","id":12}',
     INVALID_REQUEST + b'12}'),
    (b'{"jsonrpc":"2.0","method":"m","params":null,"id":null}', INVALID_REQUEST_NULL_ID),
])
def test_parse_errors(body, reply):
    with pytest.raises(RequestError) as caught:
        parse_request(body)
    assert caught.value.reply == reply


def test_non_utf8_round_trips():
    request = parse_request(b'{"jsonrpc":"2.0","method":"m","id":"caf\xe9"}')
    assert encode_success("OK", request.id) == b'{"jsonrpc":"2.0","result":"OK","id":"caf\xe9"}'


def test_encoding_member_order_and_escapes():
    assert encode_error(-32602, "Invalid params", "Bad type for parameter 'x'", "i") == (
        b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params",'
        b'"data":"Bad type for parameter \'x\'"},"id":"i"}')
    assert encode_success({"b": 1, "a": "\x01/\x7f\n"}, None) == \
        b'{"jsonrpc":"2.0","result":{"b":1,"a":"\\u0001/\x7f\\n"},"id":null}'


def test_control_pass_is_linear():
    """Many escaped quotes plus a control byte: one linear sweep."""
    body = b'{"a":"' + b'\\"' * 300000 + b'\x01'
    started = time.perf_counter()
    with pytest.raises(RequestError):
        parse_request(body)
    assert time.perf_counter() - started < 2


# -- httpwire ------------------------------------------------------------------------------

def request_of(event: HttpRequest | ParseEvent) -> HttpRequest:
    """The parser's answer, which must be a whole request."""
    assert isinstance(event, HttpRequest), event
    return event


REQ = b"POST /mi HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}"


def test_http_request_whole_and_bytewise():
    for chunks in ([REQ], [bytes([b]) for b in REQ]):
        parser = RequestParser()
        events = []
        for chunk in chunks:
            parser.feed(chunk)
            while (event := parser.next_event()) is not NEED_DATA:
                events.append(event)
        (request,) = [request_of(e) for e in events]
        assert (request.method, request.path, request.version, request.body, request.keep_alive) == \
            ("POST", "/mi", "1.1", b"{}", True)
        assert request.header("host") == "h"
        assert not parser.in_progress


def test_http_pipelined_and_connection_close():
    parser = RequestParser()
    parser.feed(REQ + REQ.replace(b"Host: h", b"Connection: close") + b"\r\n")
    first, second = request_of(parser.next_event()), request_of(parser.next_event())
    assert first.keep_alive and not second.keep_alive
    assert parser.next_event() is NEED_DATA


def test_http_expect_continue_only_when_body_missing():
    parser = RequestParser()
    parser.feed(b"POST /mi HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert parser.next_event() is CONTINUE
    assert parser.next_event() is NEED_DATA
    parser.feed(b"{}")
    assert request_of(parser.next_event()).body == b"{}"
    parser.feed(b"POST /mi HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}")
    assert request_of(parser.next_event()).body == b"{}"


def test_http_chunked_with_trailers():
    parser = RequestParser()
    parser.feed(b"POST /mi HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-T: 1\r\n\r\n")
    assert request_of(parser.next_event()).body == b"{}"


@pytest.mark.parametrize("raw, status", [
    (b"POST /mi HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", 413),
    (b"POST /mi HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /mi HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 413),
    (b"POST /mi HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST /mi HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX", 400),
    (b"POST  /mi HTTP/1.1\r\n\r\n", 400),
    (b"POST /mi HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
    (b"POST /mi FTP/1.0\r\n\r\n", 400),
])
def test_http_errors(raw, status):
    parser = RequestParser()
    parser.feed(raw)
    with pytest.raises(HttpError) as caught:
        parser.next_event()
    assert caught.value.status == status


def test_http_head_scan_is_linear():
    """Feeding a 16 KiB header block one byte at a time never rescans it."""
    parser = RequestParser(max_head=16384)
    parser.feed(b"POST /mi HTTP/1.1\r\n")
    started = time.perf_counter()
    with pytest.raises(HttpError):
        for _ in range(20000):
            parser.feed(b"a")
            assert parser.next_event() is NEED_DATA
    assert time.perf_counter() - started < 1


def test_encode_response_header_order():
    reply = encode_response(200, b"{}", content_type="application/json", close=True)
    lines = reply.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert lines[1].startswith(b"Date: ") and lines[1].endswith(b" GMT")
    assert lines[2:] == [b"Connection: close", b"Content-Type: application/json", b"Content-Length: 2", b"", b"{}"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=10))
def test_http_parser_never_crashes(data, cuts):
    parser = RequestParser(max_head=200, max_body=100)
    position = 0
    try:
        for cut in cuts + [len(data)]:
            parser.feed(data[position:position + cut])
            position += cut
            for _ in range(10):
                if parser.next_event() is NEED_DATA:
                    break
    except HttpError:
        pass


# -- fifoframe -----------------------------------------------------------------------------

def feed_all(parser, *chunks):
    out = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out


def test_fifo_one_request():
    assert FifoParser().feed(b':r1:{"a":1}') == [FifoRequest("r1", b'{"a":1}')]


def test_fifo_several_requests_and_whitespace():
    items = FifoParser().feed(b'\n :r1:{"a":"}"}\n:r2: {"b":[1,{"c":"\\""}]}  \n::{"n":1}')
    assert items == [FifoRequest("r1", b'{"a":"}"}'), FifoRequest("r2", b'{"b":[1,{"c":"\\""}]}'),
                     FifoRequest(None, b'{"n":1}')]


def test_fifo_bytewise_equals_whole():
    data = b':r1:{"a":"x\\\\"}:r2:{"q":"\\"{"}'
    parser = FifoParser()
    assert feed_all(parser, *[bytes([b]) for b in data]) == FifoParser().feed(data) == [
        FifoRequest("r1", b'{"a":"x\\\\"}'), FifoRequest("r2", b'{"q":"\\"{"}')]


def test_fifo_refused_names_consume_their_request():
    items = FifoParser().feed(b':../x:{"a":1}:a.b:{"a":2}:ok:{"a":3}')
    assert [type(i) for i in items] == [FifoRejected, FifoRejected, FifoRequest]
    assert items[2] == FifoRequest("ok", b'{"a":3}')


def test_fifo_garbage_discarded_to_end_of_line():
    items = FifoParser().feed(b'garbage here\n:r:{"a":1}')
    assert isinstance(items[0], FifoRejected) and items[1] == FifoRequest("r", b'{"a":1}')


def test_fifo_hopeless_json_is_reported_at_once():
    assert FifoParser().feed(b":r:{bad json") == [FifoRequest("r", b"{bad json")]


@pytest.mark.parametrize("partial", [b'{"jsonrpc":"2.0"', b'{"a":"unterminated', b'{"a":tr', b'{"a":-',
                                     b'{"a":"\\u00', b'{"a":1.', b'{"a":', b'{'])
def test_fifo_incomplete_json_waits(partial):
    parser = FifoParser()
    assert parser.feed(b":r:" + partial) == []
    assert parser.pending
    assert parser.flush() == [FifoRequest("r", partial)]
    assert not parser.pending


def test_fifo_oversize_request_is_skipped():
    parser = FifoParser(max_request=1000)
    items = parser.feed(b':big:{"a":"' + b"x" * 2000)
    assert items == [FifoRequest("big", b"")]
    items = parser.feed(b"x" * 5000 + b'"}:next:{"b":1}')
    assert items == [FifoRequest("next", b'{"b":1}')]


def test_fifo_long_reply_name_rejected():
    items = FifoParser().feed(b":" + b"n" * 300 + b':{"a":1}\n:ok:{"a":2}')
    assert isinstance(items[0], FifoRejected) and items[-1] == FifoRequest("ok", b'{"a":2}')


def test_fifo_dribble_is_linear():
    """A 1 MiB request written one 64-byte piece at a time stays fast."""
    parser = FifoParser()
    parser.feed(b':r:{"a":"')
    piece = b"x" * 63 + b"}"
    started = time.perf_counter()
    for _ in range(16000):
        assert parser.feed(piece) == []
    assert parser.feed(b'"}') == [FifoRequest("r", b'{"a":"' + piece * 16000 + b'"}')]
    assert time.perf_counter() - started < 3


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(1, 30), max_size=8))
def test_fifo_parser_never_crashes(data, cuts):
    parser = FifoParser(max_request=100)
    position = 0
    for cut in cuts + [len(data)]:
        for item in parser.feed(data[position:position + cut]):
            assert isinstance(item, (FifoRequest, FifoRejected))
        position += cut
    parser.flush()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
                                        "method": st.sampled_from(["which", "help", "log_level", "get_statistics",
                                                                   "list", "fs_list", "nope", 5]),
                                        "params": json_values,
                                        "id": json_values}).map(lambda v: json.dumps(v).encode())))
def test_registry_answers_any_body_with_a_valid_reply(body):
    """Whatever the bytes, handle() returns None or one compact JSON-RPC reply."""
    reply = _REGISTRY.handle(body)
    if reply is None:
        return
    decoded = json.loads(reply.decode("utf-8", "replace"))
    assert list(decoded)[0] == "jsonrpc" and list(decoded)[-1] == "id"
    assert ("result" in decoded) != ("error" in decoded)
    assert not reply.endswith(b"\n")


_REGISTRY = build_registry()


# -- regressions: whitespace and line scans stay linear ---------------------------------

@pytest.mark.timeout(5)
def test_fifo_whitespace_dribble_before_json_is_linear():
    """Commit 4db24c2: whitespace after `:x:` arriving one byte at a time was
    rescanned from the start on every feed (quadratic: 80 KB took 10 s)."""
    parser = FifoParser()
    assert parser.feed(b":x:") == []
    for _ in range(200_000):
        assert parser.feed(b" ") == []
    request = b'{"jsonrpc":"2.0","method":"which","id":1}'
    assert parser.feed(request) == [FifoRequest("x", request)]
    assert not parser.pending


def test_fifo_flushed_whitespace_only_request_is_a_parse_error():
    """`:x:` then only whitespace, then the writer goes quiet: the flushed
    request is answered -32700 by the registry, on the `x` reply file."""
    parser = FifoParser()
    assert parser.feed(b":x:") == []
    for _ in range(1000):
        assert parser.feed(b" \t\n") == []
    (item,) = parser.flush()
    assert isinstance(item, FifoRequest) and item.reply_name == "x"
    assert _REGISTRY.handle(item.body) == PARSE_ERROR_REPLY
    assert parser.flush() == [] and not parser.pending


def _trailer_line(name: bytes) -> bytes:
    """One 16 KiB trailer line, CRLF included."""
    head = name + b": "
    return head + b"v" * (16 * 1024 - len(head) - 2) + b"\r\n"


CHUNKED_THEN_PIPELINED = (
    b"POST /mi HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\n{\"a\r\n"
    b"10\r\n\":\"0123456789ab\"\r\n"
    b"1\r\n}\r\n"
    b"0\r\n"
    + _trailer_line(b"X-Trailer-One") + _trailer_line(b"X-Trailer-Two") +
    b"\r\n"
    b"POST /mi HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\n\r\n{\"b\":2}")
CHUNKED_BODY = b'{"a":"0123456789ab"}'


def _requests_from(pieces) -> list:
    parser = RequestParser()
    requests = []
    for piece in pieces:
        parser.feed(piece)
        while (event := parser.next_event()) is not NEED_DATA:
            requests.append(request_of(event))
    assert not parser.in_progress
    return [(r.method, r.path, r.body, r.keep_alive) for r in requests]


EXPECTED_TWO = [("POST", "/mi", CHUNKED_BODY, True), ("POST", "/mi", b'{"b":2}', True)]


@pytest.mark.timeout(5)
def test_http_chunk_extension_hex_size_and_trickled_trailers():
    """Commit 231ef2a: a chunk with an extension, a hex-sized chunk, two
    16 KiB trailer lines sent one byte at a time, then a pipelined request."""
    start = CHUNKED_THEN_PIPELINED.index(b"X-Trailer-One")
    end = CHUNKED_THEN_PIPELINED.index(b"\r\n\r\nPOST") + 4
    pieces = ([CHUNKED_THEN_PIPELINED[:start]]
              + [bytes([b]) for b in CHUNKED_THEN_PIPELINED[start:end]]
              + [CHUNKED_THEN_PIPELINED[end:]])
    assert _requests_from(pieces) == EXPECTED_TWO
    assert _requests_from([CHUNKED_THEN_PIPELINED]) == EXPECTED_TWO


@pytest.mark.timeout(5)
def test_http_trickled_trailer_line_is_not_rescanned():
    """Commit 231ef2a, at a size where the old rescanning cost shows: one
    256 KiB trailer line (max_head raised to allow it) sent one byte at a
    time. Searching the line again from its start on every byte costs
    ~3e10 byte comparisons (far beyond the timeout); resuming costs 256 K."""
    parser = RequestParser(max_head=1 << 19)
    parser.feed(b"POST /mi HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Big: ")
    assert parser.next_event() is NEED_DATA
    for _ in range(256 * 1024):
        parser.feed(b"v")
        assert parser.next_event() is NEED_DATA
    parser.feed(b"\r\n\r\n")
    assert request_of(parser.next_event()).body == b"{}"


@pytest.mark.timeout(5)
@pytest.mark.parametrize("seed", range(20))
def test_http_chunked_request_cut_anywhere_gives_the_same_requests(seed):
    """The same bytes cut at random (seeded) into 1-7-byte pieces."""
    rnd = random.Random(seed)
    data = CHUNKED_THEN_PIPELINED
    pieces, position = [], 0
    while position < len(data):
        size = rnd.randint(1, 7)
        pieces.append(data[position:position + size])
        position += size
    assert _requests_from(pieces) == EXPECTED_TWO

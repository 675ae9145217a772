"""Sans-IO HTTP/1.1 server side: request parser and response encoder.

Supports: HTTP/1.0 and HTTP/1.1 requests; bodies sized by Content-Length or
sent with `Transfer-Encoding: chunked`; keep-alive and pipelining (several
requests in one read, a request split over many reads); `Expect:
100-continue`; `Connection: close` / `keep-alive`. Not supported (answered
with an error status, then the connection is closed): other transfer
codings (501), HTTP versions other than 1.x (505), obsolete header line
folding and malformed request or header lines (400), a header block over
`max_head` bytes (431), a body over `max_body` bytes (413), a request with
both Content-Length and Transfer-Encoding (400: smuggling guard).

Goals: fast on the common path (one `find` for the end of the header
block, one split per line, no regex), linear in the worst case — a client
that sends one byte at a time never makes the parser rescan what it has
already looked at (`_scan_from`, for the header block and for chunk-size
and trailer lines alike), and every size is bounded before bytes are
accumulated.

Plan: `RequestParser.feed(data)` buffers bytes; `next_event()` returns an
`HttpRequest`, `NEED_DATA`, or `CONTINUE` (the transport should write
`CONTINUE_RESPONSE` once), or raises `HttpError(status)`. `encode_response`
builds reply bytes with OpenSIPS' header order (docs/protocols/mi.md §6.1): status line,
Date, optional Connection: close, extra headers, Content-Type,
Content-Length.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from email.utils import formatdate
from enum import Enum
from typing import Final

__all__ = [
    "CONTINUE",
    "CONTINUE_RESPONSE",
    "NEED_DATA",
    "HttpError",
    "ParseEvent",
    "HttpRequest",
    "RequestParser",
    "encode_response",
    "http_date",
    "json_ok_head",
]


class ParseEvent(Enum):
    """What `next_event` returns when it has no request to give."""

    NEED_DATA = "NEED_DATA"   # feed more bytes
    CONTINUE = "CONTINUE"     # write CONTINUE_RESPONSE, then feed


NEED_DATA: Final = ParseEvent.NEED_DATA
CONTINUE: Final = ParseEvent.CONTINUE
CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"

REASONS = {
    200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Payload Too Large", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented",
    503: "Service Unavailable", 505: "HTTP Version Not Supported",
}

_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_HEX = b"0123456789abcdefABCDEF"
_MAX_CHUNK_LINE = 1024
HEAD_CACHE_ENTRIES = 256
HEAD_CACHE_MAX_BYTES = 1024
# (method, target, version, headers, keep-alive, path) of a request head
_Head = tuple[str, str, str, tuple[tuple[str, str], ...], bool, str]
# head bytes -> (head, chunked, Content-Length, 100-continue wanted)
_head_cache: dict[bytes, tuple[_Head, bool, int, bool]] = {}


class _Chunk(Enum):
    """Where a chunked body's parsing stands."""

    SIZE = "size"            # a chunk-size line
    DATA = "data"            # chunk bytes
    DATA_CRLF = "data-crlf"  # the CRLF after them
    TRAILER = "trailer"      # trailer lines after the last chunk


class _Step(Enum):
    """A chunk step's answer when it has no body yet but need not wait."""

    NEXT = "next"


_NEXT_STEP: Final = _Step.NEXT   # a chunk step is done: take the next one


class HttpError(Exception):
    """The request cannot be served; answer `status` and close."""

    def __init__(self, status: int, detail: str = ""):
        super().__init__(status, detail)
        self.status = status
        self.detail = detail


class HttpRequest:
    """One complete request. Header names are lower-cased, values latin-1."""

    __slots__ = ("method", "target", "path", "version", "headers", "body", "keep_alive")

    def __init__(self, method: str, target: str, version: str, headers: Sequence[tuple[str, str]], body: bytes,
                 keep_alive: bool, path: str | None = None):
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0] if path is None else path
        self.version = version
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"HttpRequest({self.method} {self.target} HTTP/{self.version}, {len(self.body)} bytes)"


def _is_token(data: bytes) -> bool:
    # Deleting every token character leaves nothing: one C-level pass.
    return bool(data) and not data.translate(None, _TOKEN_CHARS)


class RequestParser:
    """Incremental parser for the requests of one connection."""

    def __init__(self, max_head: int = 16384, max_body: int = 1 << 20):
        self.max_head = max_head
        self.max_body = max_body
        self._buf = bytearray()
        self._pos = 0            # start of the unconsumed bytes
        self._scan_from = 0      # where the next search for the head end starts
        self._head: _Head | None = None   # (method, target, version, headers, keep_alive, path) once parsed
        self._length = 0         # Content-Length of the current body
        self._chunked = False
        self._chunks = bytearray()
        self._chunk_state = _Chunk.SIZE
        self._chunk_left = 0
        self._continue_pending = False

    # -- buffer ---------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._scan_from -= self._pos
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet part of a returned request."""
        return len(self._buf) - self._pos + len(self._chunks)

    @property
    def in_progress(self) -> bool:
        return self._head is not None or len(self._buf) > self._pos

    def _consume(self, n: int) -> bytes:
        data = bytes(self._buf[self._pos:self._pos + n])
        self._pos += n
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._scan_from -= self._pos
            self._pos = 0
        return data

    # -- events ---------------------------------------------------------------

    def next_event(self) -> HttpRequest | ParseEvent:
        if self._head is None:
            request = self._whole_known_request()
            if request is not None:
                return request
            if not self._read_head():
                return NEED_DATA
        if self._continue_pending:
            self._continue_pending = False
            if not self._body_complete_soon():
                return CONTINUE
        body = self._read_chunked() if self._chunked else self._read_body()
        if body is None:
            return NEED_DATA
        head = self._head
        assert head is not None   # set by _read_head above
        method, target, version, headers, keep_alive, path = head
        self._head = None
        self._scan_from = self._pos
        return HttpRequest(method, target, version, headers, body, keep_alive, path)

    def _whole_known_request(self) -> HttpRequest | None:
        """The common case in one go: a whole request is buffered, with a
        header block seen before (cached), a Content-Length body and no
        `Expect`. None sends the caller down the general path."""
        buf = self._buf
        pos = self._pos
        end = buf.find(b"\r\n\r\n", self._scan_from if self._scan_from > pos else pos)
        if end <= pos or end - pos > self.max_head:
            return None
        parsed = _head_cache.get(bytes(buf[pos:end]))
        if parsed is None:
            return None
        head, chunked, length, continue_wanted = parsed
        start = end + 4
        stop = start + length
        if chunked or continue_wanted or length > self.max_body or stop > len(buf):
            return None
        body = bytes(buf[start:stop])
        if stop == len(buf):
            buf.clear()
            stop = 0
        elif stop > 65536 and stop * 2 > len(buf):
            del buf[:stop]
            stop = 0
        self._pos = self._scan_from = stop
        method, target, version, headers, keep_alive, path = head
        return HttpRequest(method, target, version, headers, body, keep_alive, path)

    def _body_complete_soon(self) -> bool:
        if self._chunked:
            return False
        return len(self._buf) - self._pos >= self._length

    # -- head -----------------------------------------------------------------

    def _read_head(self) -> bool:
        buf = self._buf
        # Tolerate empty lines before a request line (RFC 9112 §2.2).
        while buf.startswith(b"\r\n", self._pos):
            self._pos += 2
        if self._scan_from < self._pos:
            self._scan_from = self._pos
        end = buf.find(b"\r\n\r\n", self._scan_from)
        if end < 0:
            if len(buf) - self._pos > self.max_head:
                raise HttpError(431, "header block too large")
            self._scan_from = max(self._pos, len(buf) - 3)
            return False
        if end - self._pos > self.max_head:
            raise HttpError(431, "header block too large")
        head = bytes(buf[self._pos:end])
        self._pos = end + 4
        self._parse_head(head)
        return True

    def _parse_head(self, head: bytes) -> None:
        # Keep-alive clients repeat the same header block: parsing is a pure
        # function of its bytes, so small heads are parsed once (the body
        # limit, which may differ between parsers, is checked each time).
        parsed = _head_cache.get(head)
        if parsed is None:
            parsed = _parse_head_bytes(head)
            if len(head) <= HEAD_CACHE_MAX_BYTES:
                if len(_head_cache) >= HEAD_CACHE_ENTRIES:
                    _head_cache.clear()
                _head_cache[head] = parsed
        self._head, self._chunked, self._length, self._continue_pending = parsed
        if self._length > self.max_body:
            self._head = None
            raise HttpError(413, "body too large")
        if self._chunked:
            self._chunks = bytearray()
            self._chunk_state = _Chunk.SIZE

    # -- bodies ---------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        if len(self._buf) - self._pos < self._length:
            return None
        return self._consume(self._length)

    def _read_chunked(self) -> bytes | None:
        """The body once its last chunk and trailers are in, else None."""
        while True:
            result = self._chunk_steps[self._chunk_state](self)
            if result is not _NEXT_STEP:
                return result

    def _chunk_size(self) -> _Step | None:
        buf = self._buf
        end = self._find_line_end()
        if end < 0:
            if len(buf) - self._pos > _MAX_CHUNK_LINE:
                raise HttpError(400, "chunk size line too long")
            return None
        line = bytes(buf[self._pos:end]).split(b";", 1)[0].strip(b" \t")
        if not line or len(line) > 16 or line.translate(None, _HEX):
            raise HttpError(400, "bad chunk size")
        size = int(line, 16)
        self._pos = end + 2
        if len(self._chunks) + size > self.max_body:
            raise HttpError(413, "body too large")
        if size == 0:
            self._chunk_state = _Chunk.TRAILER
        else:
            self._chunk_left = size
            self._chunk_state = _Chunk.DATA
        return _NEXT_STEP

    def _chunk_data(self) -> _Step | None:
        take = min(self._chunk_left, len(self._buf) - self._pos)
        if take == 0:
            return None
        self._chunks += self._consume(take)
        self._chunk_left -= take
        if self._chunk_left == 0:
            self._chunk_state = _Chunk.DATA_CRLF
        return _NEXT_STEP

    def _chunk_end(self) -> _Step | None:
        if len(self._buf) - self._pos < 2:
            return None
        if not self._buf.startswith(b"\r\n", self._pos):
            raise HttpError(400, "bad chunk end")
        self._pos += 2
        self._chunk_state = _Chunk.SIZE
        return _NEXT_STEP

    def _chunk_trailer(self) -> bytes | _Step | None:
        """Trailer lines up to an empty one, ignored; then the body."""
        end = self._find_line_end()
        if end < 0:
            if len(self._buf) - self._pos > self.max_head:
                raise HttpError(431, "trailers too large")
            return None
        empty = end == self._pos
        self._pos = end + 2
        if not empty:
            return _NEXT_STEP
        body = bytes(self._chunks)
        self._chunks = bytearray()
        self._chunk_state = _Chunk.SIZE
        return body

    # filled below: _Chunk -> step method (None: more bytes needed, _NEXT_STEP, or the body)
    _chunk_steps: dict[_Chunk, Callable[[RequestParser], bytes | _Step | None]] = {}

    def _find_line_end(self) -> int:
        """The CRLF ending the line at `_pos`, or -1; a line still coming in
        is never searched again from its start."""
        buf = self._buf
        end = buf.find(b"\r\n", max(self._pos, self._scan_from))
        if end < 0:
            self._scan_from = len(buf) - 1
        return end


RequestParser._chunk_steps = {
    _Chunk.SIZE: RequestParser._chunk_size,
    _Chunk.DATA: RequestParser._chunk_data,
    _Chunk.DATA_CRLF: RequestParser._chunk_end,
    _Chunk.TRAILER: RequestParser._chunk_trailer,
}


_VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}


def _request_line(line: bytes) -> tuple[bytes, bytes, str]:
    parts = line.split(b" ")
    if len(parts) != 3 or not _is_token(parts[0]) or not parts[1]:
        raise HttpError(400, "bad request line")
    method, target, proto = parts
    version = _VERSIONS.get(proto)
    if version is None:
        if proto.startswith(b"HTTP/"):
            raise HttpError(505, "unsupported HTTP version")
        raise HttpError(400, "bad request line")
    return method, target, version


def _body_framing(lengths: list[str], codings: list[str]) -> tuple[bool, int]:
    """(chunked, Content-Length) from the framing headers."""
    if codings and lengths:
        raise HttpError(400, "both Content-Length and Transfer-Encoding")
    if codings:
        if codings != ["chunked"]:
            raise HttpError(501, "unsupported transfer coding")
        return True, 0
    if not lengths:
        return False, 0
    if len(set(lengths)) != 1 or not lengths[0].isdigit() or not lengths[0].isascii():
        raise HttpError(400, "bad Content-Length")
    if len(lengths[0]) > 12:
        raise HttpError(413, "body too large")
    return False, int(lengths[0])


def _parse_head_bytes(head: bytes) -> tuple[_Head, bool, int, bool]:
    """(head tuple, chunked, content length, 100-continue wanted) or HttpError."""
    lines = head.split(b"\r\n")
    method, target, version = _request_line(lines[0])
    headers = []
    lengths: list[str] = []
    codings: list[str] = []
    connection: list[str] = []
    expect = None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _is_token(name):
            raise HttpError(400, "bad header line")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers.append((key, text))
        if key == "content-length":
            lengths.append(text)
        elif key == "transfer-encoding":
            codings += [c.strip().lower() for c in text.split(",") if c.strip()]
        elif key == "connection":
            connection += [c.strip().lower() for c in text.split(",")]
        elif key == "expect":
            expect = text.lower()
    chunked, length = _body_framing(lengths, codings)
    if version == "1.1":
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection and "close" not in connection
    continue_wanted = expect == "100-continue" and version == "1.1" and (chunked or length > 0)
    target_text = target.decode("latin-1")
    head_tuple = (method.decode("ascii"), target_text, version, tuple(headers), keep_alive,
                  target_text.split("?", 1)[0])
    return head_tuple, chunked, length, continue_wanted


_date_cache: list = [0, ""]


def http_date() -> str:
    """The IMF-fixdate of now, computed once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True)
    return _date_cache[1]


_ok_head_cache: list = [0, b""]


def json_ok_head(length: int) -> bytes:
    """The head `encode_response(200, body, content_type="application/json")`
    puts before a body of `length` bytes (keep-alive), built once per second."""
    now = int(time.time())
    if _ok_head_cache[0] != now:
        _ok_head_cache[0] = now
        _ok_head_cache[1] = (f"HTTP/1.1 200 OK\r\nDate: {http_date()}\r\n"
                             "Content-Type: application/json\r\nContent-Length: ").encode("latin-1")
    return b"%s%d\r\n\r\n" % (_ok_head_cache[1], length)


def encode_response(status: int, body: bytes = b"", *, content_type: str | None = None,
                    close: bool = False, headers: tuple = ()) -> bytes:
    """Status line, Date, [Connection: close], extra headers, [Content-Type],
    Content-Length, blank line, body."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}", f"Date: {http_date()}"]
    if close:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in headers]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

"""Sans-IO FreeSWITCH Event Socket framing (docs/protocols/esl.md §1, §2, §6.2).

Supports
    * server -> client frames: a header block (`Name: value` lines ended by an
      empty line), then exactly `Content-Length` body bytes when that header
      is present. Any chunking of the byte stream: several frames per chunk,
      frames split anywhere. Blank lines between frames are skipped. A body
      over the cap (`max_body`) is read through and discarded, never held:
      its frame comes out with `body=None` and `oversize` set to its length,
      so the owner can fail the command it answers or count the dropped
      event while the connection carries on.
    * client -> server commands: `auth`, `userauth`, `event json`,
      `nixevent` and any validated command text, each ended by `\\n\\n`.
    * the event name of a `text/event-json` body without a JSON parse.

Goals
    Fast on average: an ESL reader spends its life here, so the common case —
    one `recv()` holding whole event frames — costs one `find(b"\\n\\n")`, a
    cheap header parse and one slice per frame; the body is kept verbatim
    (it is relayed byte for byte). Linear in the worst case: a hostile or
    broken peer that sends one byte at a time, or announces a huge body,
    cannot make the parser quadratic or make it allocate more than the caps.
    Anything that is not ESL framing (a bad `Content-Length`, an endless
    header block) is a `ProtocolError`: the connection must be dropped.

Plan
    `FrameParser.feed(data)` returns the frames completed by `data`, in order,
    as soon as their last byte is in — the tail of a burst never waits for
    more input. Between feeds the parser is in one of two states:
    *header* (pending bytes kept as a list of chunks; only the new chunk and
    one byte before it are searched for the blank line) or *body* (the header
    is parsed; body chunks are collected until `Content-Length` bytes are in,
    then joined once — or, for an oversized body, only counted). `event_name(body)` reads `Event-Name` by a bounded scan
    of the start of the body and falls back to a search for the key anywhere
    at the top level (sendevent events put the client's headers first).
"""

from __future__ import annotations

import json.decoder
import re
from collections.abc import Iterable

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_HEADER",
    "CommandTextError",
    "Frame",
    "FrameParser",
    "ProtocolError",
    "auth_command",
    "breaks_line",
    "check_word",
    "command_text",
    "encode_command",
    "event_command",
    "event_name",
    "header_value",
    "nixevent_command",
    "printable",
]

# FreeSWITCH events are kilobytes (a CHANNEL_* event with every channel
# variable stays well under 64 KiB); 4 MiB leaves room for large `api`
# replies (`show channels` is about 1 KB per channel) while one peer can make
# a connection hold at most this much. `esl_max_frame_size` changes it.
DEFAULT_MAX_BODY = 4 * 1024 * 1024
DEFAULT_MAX_HEADER = 1024 * 1024
MAX_EVENT_NAME = 256

CT_AUTH_REQUEST = "auth/request"
CT_COMMAND_REPLY = "command/reply"
CT_API_RESPONSE = "api/response"
CT_EVENT_JSON = "text/event-json"
CT_DISCONNECT = "text/disconnect-notice"
CT_RUDE_REJECTION = "text/rude-rejection"
REPLY_TYPES = frozenset((CT_COMMAND_REPLY, CT_API_RESPONSE))

# FreeSWITCH always writes event headers in this form; matching it whole
# saves the generic header parse for the bulk of the traffic.
_EVENT_HEAD_PREFIX = b"Content-Length: "
_EVENT_JSON_HEAD_REST = b"\nContent-Type: text/event-json\n\n"
_EVENT_JSON_CT_PAIR = ("Content-Type", CT_EVENT_JSON)


class ProtocolError(Exception):
    """The peer does not speak ESL framing; the connection must be dropped."""


class Frame:
    """One server -> client frame: headers in wire order, body or None."""

    __slots__ = ("_headers", "content_type", "body", "_length", "oversize")

    def __init__(self, headers: list[tuple[str, str]] | None, content_type: str | None, body: bytes | None,
                 length: bytes | None = None, oversize: int = 0):
        self._headers = headers
        self.content_type = content_type
        self.body = body
        self._length = length  # the raw Content-Length of an event frame whose headers are built on demand
        self.oversize = oversize  # the length of a body over the cap, discarded (body is None)

    @property
    def headers(self) -> list[tuple[str, str]]:
        headers = self._headers
        if headers is None:
            assert self._length is not None  # a frame built without headers carries its raw Content-Length
            headers = self._headers = [("Content-Length", self._length.decode()), _EVENT_JSON_CT_PAIR]
        return headers

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (case-insensitive)."""
        return header_value(self.headers, name, default)

    @property
    def reply_text(self) -> str | None:
        return self.header("Reply-Text")

    @property
    def is_disconnect(self) -> bool:
        """A disconnect notice (a `linger` notice of outbound sessions is not)."""
        if self.content_type == CT_RUDE_REJECTION:
            return True
        if self.content_type != CT_DISCONNECT:
            return False
        disposition = self.header("Content-Disposition")
        return disposition is None or disposition.lower() != "linger"

    def __repr__(self) -> str:
        size = None if self.body is None else len(self.body)
        return f"Frame({self.content_type!r}, headers={len(self.headers)}, body={size})"


def header_value(headers: Iterable[tuple[str, str]], name: str, default: str | None = None) -> str | None:
    """The first value of header `name` in (name, value) pairs, case-insensitive."""
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return default


def _parse_length(raw: bytes | str) -> int:
    if not raw or not raw.isdigit() or not raw.isascii() or len(raw) > 15:
        raise ProtocolError(f"bad Content-Length {_show(raw)}")
    return int(raw)


def _show(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1")
    return repr(raw[:40])


def _parse_header_block(block: bytes) -> tuple[list[tuple[str, str]], str | None, int | None]:
    """Return (headers, content_type, content_length or None)."""
    headers: list[tuple[str, str]] = []
    content_type = None
    length = None
    for line in block.decode("utf-8", "replace").split("\n"):
        name, colon, value = line.partition(":")
        if not colon:
            continue  # libesl ignores a header line without ':'
        value = value.lstrip(" \t")
        if value.endswith("\r"):
            value = value[:-1]
        headers.append((name, value))
        lname = name.lower()
        if lname == "content-type":
            if content_type is None:
                content_type = value
        elif lname == "content-length":
            if length is None:
                length = _parse_length(value)
            elif _parse_length(value) != length:
                raise ProtocolError("conflicting Content-Length headers")
    return headers, content_type, length


class FrameParser:
    """Incremental ESL frame parser: `feed(bytes) -> list[Frame]`."""

    __slots__ = ("max_body", "max_header", "_chunks", "_pending", "_head", "_need", "_skip", "_failed")

    def __init__(self, max_body: int = DEFAULT_MAX_BODY, max_header: int = DEFAULT_MAX_HEADER):
        self.max_body = max_body
        self.max_header = max_header
        self._chunks: list[bytes | memoryview] = []  # pending header bytes, or body bytes when _head is set
        self._pending = 0  # bytes in _chunks
        # (headers, content_type) of a frame waiting for its body
        self._head: tuple[list[tuple[str, str]], str | None] | None = None
        self._need = 0  # body bytes that frame needs
        self._skip = False  # that body is over max_body: counted, not kept
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes of the incomplete frame held so far (its body only, once its
        header block is parsed)."""
        return self._pending

    @property
    def in_frame(self) -> bool:
        """True while a frame is incomplete (at EOF: a truncated frame)."""
        return self._pending > 0 or self._head is not None

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed:
            raise ProtocolError("parser already failed")
        if not data:
            return []
        try:
            if not self._chunks and self._head is None:
                return self._parse(data, [])
            if self._head is not None:
                return self._feed_body(data)
            return self._feed_header(data)
        except ProtocolError:
            self._failed = True
            raise

    def _feed_body(self, data: bytes) -> list[Frame]:
        missing = self._need - self._pending
        if self._skip:
            return self._skip_body(data, missing)
        if len(data) < missing:
            self._chunks.append(data)
            self._pending += len(data)
            return []
        rest: bytes | memoryview
        if len(data) == missing:
            self._chunks.append(data)
            rest = b""
        else:
            view = memoryview(data)
            self._chunks.append(view[:missing])
            rest = view[missing:]
        body = b"".join(self._chunks)
        assert self._head is not None  # _feed_body runs only while a frame waits for its body
        headers, content_type = self._head
        self._head = None
        self._chunks = []
        self._pending = 0
        frames = [Frame(headers, content_type, body)]
        if rest:
            return self._parse(bytes(rest), frames)
        return frames

    def _skip_body(self, data: bytes, missing: int) -> list[Frame]:
        if len(data) < missing:
            self._pending += len(data)
            return []
        assert self._head is not None  # set by _start_body()
        headers, content_type = self._head
        frames = [Frame(headers, content_type, None, oversize=self._need)]
        self._head = None
        self._skip = False
        self._pending = 0
        if len(data) > missing:
            return self._parse(bytes(data[missing:]), frames)
        return frames

    def _start_body(self, headers: list[tuple[str, str]], content_type: str | None, length: int, buf: bytes,
                    start: int) -> None:
        """A frame whose body is not all in `buf`: wait for the rest."""
        self._head = (headers, content_type)
        self._need = length
        self._skip = length > self.max_body
        self._chunks = [] if self._skip else [buf[start:]]
        self._pending = len(buf) - start

    def _feed_header(self, data: bytes) -> list[Frame]:
        last = self._chunks[-1]
        if data.find(b"\n\n") < 0 and not (data[:1] == b"\n" and last[-1:] == b"\n"):
            self._chunks.append(data)
            self._pending += len(data)
            if self._pending > self.max_header:
                raise ProtocolError(f"header block longer than {self.max_header} bytes")
            return []
        self._chunks.append(data)
        buf = b"".join(self._chunks)
        self._chunks = []
        self._pending = 0
        return self._parse(buf, [])

    def _parse(self, buf: bytes, frames: list[Frame]) -> list[Frame]:
        """Cut every complete frame out of `buf`; keep the incomplete tail."""
        pos = 0
        size = len(buf)
        max_body = self.max_body
        find = buf.find
        startswith = buf.startswith
        append = frames.append
        while pos < size:
            if startswith(_EVENT_HEAD_PREFIX, pos):
                # the common case: FreeSWITCH's event header block, matched
                # with a memchr and a prefix compare instead of a generic parse
                eol = find(b"\n", pos + 16, pos + 64)
                if eol > 0 and startswith(_EVENT_JSON_HEAD_REST, eol):
                    raw = buf[pos + 16:eol]
                    if not raw.isdigit() or len(raw) > 15:
                        raise ProtocolError(f"bad Content-Length {_show(raw)}")
                    length = int(raw)
                    start = eol + 32
                    stop = start + length
                    if stop <= size and length <= max_body:
                        append(Frame(None, CT_EVENT_JSON, buf[start:stop], raw))
                        pos = stop
                        continue
                    headers = [("Content-Length", raw.decode()), _EVENT_JSON_CT_PAIR]
                    if stop <= size:
                        append(Frame(headers, CT_EVENT_JSON, None, oversize=length))
                        pos = stop
                        continue
                    self._start_body(headers, CT_EVENT_JSON, length, buf, start)
                    break
            end = find(b"\n\n", pos)
            if end < 0:
                if size - pos > self.max_header:
                    raise ProtocolError(f"header block longer than {self.max_header} bytes")
                self._chunks = [buf[pos:]]
                self._pending = size - pos
                break
            if end == pos:  # a blank line between frames
                pos += 1
                continue
            if buf[pos] == 10:  # leading newline before a header block
                pos += 1
                continue
            if end - pos > self.max_header:
                raise ProtocolError(f"header block longer than {self.max_header} bytes")
            headers, content_type, block_length = _parse_header_block(buf[pos:end])
            start = end + 2
            if block_length is None:
                append(Frame(headers, content_type, None))
                pos = start
                continue
            stop = start + block_length
            if stop > size:
                self._start_body(headers, content_type, block_length, buf, start)
                break
            if block_length > max_body:
                append(Frame(headers, content_type, None, oversize=block_length))
            else:
                append(Frame(headers, content_type, buf[start:stop]))
            pos = stop
        return frames


_UNPRINTABLE = re.compile(r"[^\x20-\x5b\x5d-\x7e\u00a0-\ud7ff\ue000-\ufffd]")


def printable(text: str | bytes | None, limit: int = 200) -> str:
    """Peer-supplied text made safe for one log line: control characters
    (CR, LF, ESC…) and undecodable bytes escaped as `\\xNN`/`\\uNNNN`, cut
    to `limit` characters with the full length noted."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    size = len(text)
    if size > limit:
        text = text[:limit]
    text = _UNPRINTABLE.sub(_escape_char, text)
    if size > limit:
        text += f"... ({size} chars)"
    return text


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    if 0xdc80 <= code <= 0xdcff:  # an undecodable byte (surrogateescape)
        return f"\\x{code - 0xdc00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


# ---------------------------------------------------------------------------
# Event name of a JSON event body

_NAME_KEY = b'"Event-Name":"'
_NAME_AT_START = b'{"Event-Name":"'
_NAME_KEY_LOOSE = re.compile(rb'[{,]\s*"Event-Name"\s*:\s*"')
_name_cache: dict[bytes, str] = {}


def event_name(body: bytes) -> str | None:
    """`Event-Name` of a `text/event-json` body, or None if it has none.

    FreeSWITCH writes compact JSON, core events with `Event-Name` first. A
    key is recognised only where JSON structure allows one (after `{` or
    `,` outside any string: inside a string every `"` is escaped), so a
    value that merely contains the text `"Event-Name":"` is never taken for
    it. The name must be a non-empty string of at most 256 bytes.
    """
    if body.startswith(_NAME_AT_START):
        start = 15
    else:
        start = -1
        at = body.find(_NAME_KEY)
        while at > 0:
            if body[at - 1] in b"{,":
                start = at + 14
                break
            at = body.find(_NAME_KEY, at + 1)
        if start < 0:
            match = _NAME_KEY_LOOSE.search(body)
            if match is None:
                return None
            start = match.end()
    end = body.find(b'"', start, start + MAX_EVENT_NAME + 1)
    if end <= start:
        return None
    raw = body[start:end]
    name = _name_cache.get(raw)
    if name is not None:
        return name
    if b"\\" in raw:
        return _escaped_name(body, start)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(_name_cache) >= 4096:
        _name_cache.clear()
    _name_cache[raw] = name
    return name


def _escaped_name(body: bytes, start: int) -> str | None:
    """A name with JSON escapes (never seen from FreeSWITCH): decode properly."""
    window = body[start:start + 6 * MAX_EVENT_NAME].decode("utf-8", "replace")
    try:
        name, _ = json.decoder.scanstring(window, 0)  # type: ignore[attr-defined]  # public, not in the stubs
    except ValueError:
        return None
    return name or None


# ---------------------------------------------------------------------------
# Commands (client -> server)

class CommandTextError(ValueError):
    """A command text that cannot be sent; ``kind`` says why: "empty",
    "too long" or "empty line" (it would end this command and start another)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def command_text(text: str, max_bytes: int | None = None) -> str:
    """``text`` as one command to send (``encode_command`` adds the empty
    line): trailing CR/LF are only a terminator and are dropped; interior
    single newlines (header lines such as ``job-uuid: foobar``) are kept.
    Raises ``CommandTextError`` when nothing is left, when it is over
    ``max_bytes`` (UTF-8), or when it holds an empty line."""
    command = text.rstrip("\r\n")
    if not command.strip():
        raise CommandTextError("empty", "an ESL command must not be empty")
    if max_bytes is not None and len(command.encode("utf-8", "surrogateescape")) > max_bytes:
        raise CommandTextError("too long", f"an ESL command must be at most {max_bytes} bytes")
    if any(not line.rstrip("\r") for line in command.split("\n")):
        raise CommandTextError("empty line", "an ESL command must not hold an empty line")
    return command


def breaks_line(value: str) -> bool:
    """True when ``value`` holds a CR or LF: as a word of a command line (an
    event name, a user name, a password) it would end that line."""
    return "\n" in value or "\r" in value


def check_word(what: str, value: str) -> None:
    """ValueError unless ``value`` is non-empty and does not break the line."""
    if not value or breaks_line(value):
        raise ValueError(f"bad {what}: must be non-empty and on one line")


def encode_command(text: str) -> bytes:
    """Wire bytes of one command: its text then the empty line."""
    return text.encode("utf-8") + b"\n\n"


def auth_command(password: str, username: str | None = None) -> str:
    """`auth PASS` or, with a username, `userauth USER:PASS` (docs/protocols/scripting.md §2.3)."""
    check_word("password", password)
    if username:
        check_word("username", username)
        return f"userauth {username}:{password}"
    return f"auth {password}"


def event_command(name: str) -> str:
    check_word("event name", name)
    return f"event json {name}"


def nixevent_command(name: str) -> str:
    check_word("event name", name)
    return f"nixevent {name}"

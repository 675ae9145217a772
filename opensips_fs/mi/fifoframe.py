"""Sans-IO framing of the MI FIFO stream: `:<reply_name>:<json>` requests.

Supports (docs/protocols/mi.md §6.2): any number of requests in one write, a request split
over many writes, whitespace (any byte <= 0x20) around requests, an empty
reply name (`::{…}`: run, no reply). A reply name containing `.`, `/` or
`\\` is refused (the request is consumed, not run, not answered). A request
whose JSON cannot become valid however many bytes follow is a parse error
as soon as that is known (the caller answers -32700: OpenSIPS leaves the
client blocked); so is a request over `max_request` bytes, whose remaining
bytes are then skipped. Bytes that do not start with `:` are discarded up to
the end of the line.

Goals: fast on the common path (one regex sweep over the bytes that matter:
quotes, backslashes, brackets), linear in the worst case — each byte is
scanned once by the bracket scanner, whatever the size of the reads (so is
the whitespace before a request's JSON: it is dropped as it arrives); the
trial parse that detects hopeless JSON early runs on every read only while
the request is small (<= 4 KiB, OpenSIPS' own limit) and afterwards only
when the request has doubled in size, so its total cost stays linear too.

Plan: `FifoParser.feed(data)` returns the list of `FifoRequest` /
`FifoRejected` items completed by `data`, in order; `flush()` ends a
pending incomplete request (the transport calls it when the writer has
gone quiet) and returns it as a parse-error request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .jsonrpc import decode_first_value

__all__ = ["FifoParser", "FifoRejected", "FifoRequest", "valid_reply_name"]

MAX_NAME = 255
TRIAL_ALWAYS_BELOW = 4096

_SPECIAL = re.compile(rb'["\\{}\[\]]')
_SPACE = re.compile(rb"[\x00-\x20]*")
_NOT_SPACE = re.compile(rb"[^\x00-\x20]")
_SPACE_OR_END = re.compile(rb"[\x00-\x20]")
# What may legitimately be cut at the end of a partial JSON text.
_PARTIAL_TOKEN = re.compile(r'[-+0-9.eE]*|t(r(ue?)?)?|f(a(l(se?)?)?)?|n(u(ll?)?)?|\\?u[0-9a-fA-F]{0,3}')


def valid_reply_name(name: str) -> bool:
    return not any(c in name for c in "./\\")


@dataclass
class FifoRequest:
    """A request to run. `reply_name` is None when no reply is wanted;
    `body` is the JSON text (possibly invalid: the registry answers -32700)."""

    reply_name: str | None
    body: bytes


@dataclass
class FifoRejected:
    """Bytes that were dropped without running anything, and why."""

    reason: str
    reply_name: str | None = None


class FifoParser:
    def __init__(self, max_request: int = 1 << 20):
        self.max_request = max_request
        self._buf = bytearray()
        self._json_start = 0      # offset of the JSON's first byte in _buf
        self._scan = 0            # next offset the bracket scanner looks at
        self._reset(0)

    @property
    def pending(self) -> bool:
        """An incomplete request is buffered."""
        return self._state in ("name", "json") or bool(_NOT_SPACE.search(self._buf))

    def feed(self, data: bytes) -> list:
        self._buf += data
        out: list = []
        while self._step(out):
            pass
        return out

    def flush(self) -> list:
        """The writer went quiet: an incomplete request is a parse error."""
        out: list = []
        if self._state == "json":
            self._finish_json(len(self._buf), out, complete=False)
        elif self._state == "name":
            out.append(FifoRejected("incomplete reply name"))
            self._reset(len(self._buf))
        elif self._state == "skip-line":
            self._reset(len(self._buf))
        return out

    # -- the machine ----------------------------------------------------------

    def _reset(self, consumed: int) -> None:
        """Drop `consumed` bytes and wait for the next request."""
        del self._buf[:consumed]
        self._state = "start"     # start, name, json, skip-line, skip-json
        self._name: str | None = None
        self._refused = False
        self._kind: str | None = None  # "container", "string", "scalar" once known
        self._depth = 0
        self._in_string = False
        self._escaped_until = -1
        self._last_trial_size = 0

    def _step(self, out: list) -> bool:
        buf = self._buf
        state = self._state
        if state == "start":
            skip = _SPACE.match(buf).end()  # type: ignore[union-attr]  # `*` always matches
            if skip == len(buf):
                buf.clear()
                return False
            if buf[skip] != 0x3A:  # ':'
                out.append(FifoRejected("request does not start with ':'"))
                del buf[:skip]
                self._state = "skip-line"
                return True
            del buf[:skip + 1]
            self._state = "name"
            return True
        if state == "skip-line":
            end = buf.find(b"\n")
            if end < 0:
                buf.clear()
                return False
            self._reset(end + 1)
            return True
        if state == "name":
            end = buf.find(b":")
            if end < 0:
                if len(buf) > MAX_NAME:
                    out.append(FifoRejected("reply name too long"))
                    self._state = "skip-line"
                    return True
                return False
            if end > MAX_NAME:
                out.append(FifoRejected("reply name too long"))
                self._state = "skip-line"
                return True
            name = bytes(buf[:end]).decode("utf-8", "surrogateescape")
            del buf[:end + 1]
            self._refused = not valid_reply_name(name)
            self._name = name or None
            self._state = "json"
            self._json_start = 0
            self._scan = 0
            return True
        if state in ("json", "skip-json"):
            return self._scan_json(out)
        raise AssertionError(state)

    def _scan_json(self, out: list) -> bool:
        buf = self._buf
        if self._kind is None:
            first = _NOT_SPACE.search(buf, self._json_start)
            if first is None:
                buf.clear()  # only whitespace so far: keep nothing to rescan
                return False
            self._json_start = self._scan = first.start()
            head = buf[self._json_start]
            self._kind = "container" if head in b"{[" else ("string" if head == 0x22 else "scalar")
        end = self._find_end()
        if end is not None:
            if self._state == "skip-json":
                self._reset(end)
            else:
                self._finish_json(end, out, complete=True)
            return True
        if self._state == "skip-json":
            del buf[:self._scan]
            self._escaped_until -= self._scan
            self._scan = 0
            return False
        size = len(buf) - self._json_start
        if size > self.max_request:
            out.append(FifoRequest(None if self._refused else self._name, b""))
            del buf[:self._scan]
            self._escaped_until -= self._scan
            self._scan = 0
            self._json_start = 0
            self._state = "skip-json"
            return False
        if size <= TRIAL_ALWAYS_BELOW or size >= 2 * self._last_trial_size:
            self._last_trial_size = size
            if self._hopeless():
                self._finish_json(len(buf), out, complete=False)
                return True
        return False

    def _find_end(self) -> int | None:
        """Offset just past the first JSON value, or None if not there yet."""
        buf = self._buf
        if self._kind == "scalar":
            match = _SPACE_OR_END.search(buf, self._scan)
            if match is None:
                self._scan = len(buf)
                return None
            return match.start()
        for match in _SPECIAL.finditer(buf, self._scan):
            at = match.start()
            if at < self._escaped_until:
                continue
            char = buf[at]
            if self._in_string:
                if char == 0x5C:    # backslash: the next byte is escaped
                    self._escaped_until = at + 2
                elif char == 0x22:
                    self._in_string = False
                    if self._kind == "string":
                        return at + 1
            elif char == 0x22:
                self._in_string = True
            elif char in b"{[":
                self._depth += 1
            elif char in b"}]":
                self._depth -= 1
                if self._depth <= 0:
                    return at + 1
        self._scan = len(buf)
        return None

    def _hopeless(self) -> bool:
        """The partial JSON already has an error that more bytes cannot fix."""
        text = bytes(self._buf[self._json_start:]).decode("utf-8", "surrogateescape")
        try:
            decode_first_value(text)
        except json.JSONDecodeError as err:
            if err.msg.startswith("Unterminated string"):
                return False
            rest = text[err.pos:].strip(" \t\r\n")
            return not (len(rest) <= 6 and _PARTIAL_TOKEN.fullmatch(rest))
        except (ValueError, RecursionError):
            return True
        return False

    def _finish_json(self, end: int, out: list, complete: bool) -> None:
        body = bytes(self._buf[self._json_start:end])
        if not complete and not body:
            body = b"\0"  # nothing at all: still a parse error for the registry
        if self._refused:
            out.append(FifoRejected("reply name with '.', '/' or '\\'", self._name))
        else:
            out.append(FifoRequest(self._name, body))
        self._reset(end)

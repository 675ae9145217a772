"""Sans-IO parser of the commands a client sends to FreeSWITCH's inbound
Event Socket (server side of docs/protocols/esl.md §1.2 and §7).

Supports:
  * ``<command line>\\n[Header: value\\n …]\\n`` with LF or CRLF line ends;
  * blank lines before a command (ignored), commands split over any number
    of ``feed()`` calls, several commands in one call (pipelining);
  * header lines after the command line (``Job-UUID:``, sendevent headers);
    a header line without ``:`` is ignored;
  * a client ``Content-Length`` body (attached to the command); a negative
    value or one over 16 MiB is a fatal error (FreeSWITCH: no reply,
    disconnect notice, close);
  * a command whose first byte is NUL: fatal ``parse error`` (FreeSWITCH
    replies ``-ERR command parse error.``, then notice and close); a NUL
    later in a line ends that line, as in C.

Goals: fast on average (one ``bytes.find`` per line, no per-byte Python
work), linear in the worst case (the scan offset only moves forward, so a
peer dribbling one byte at a time cannot make us rescan the buffer), bounded
memory (a header block over ``max_block`` bytes is fatal).

Plan: ``feed(data)`` appends to a buffer and returns the list of complete
items: ``Command`` objects, and at most one final ``ParseError`` after which
the parser stays dead (the connection is to be closed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Command", "ParseError", "CommandParser", "MAX_BODY", "decode"]

MAX_BODY = 16 * 1024 * 1024


def decode(raw: bytes) -> str:
    """Bytes of the wire as text, keeping invalid UTF-8 recoverable."""
    return raw.decode("utf-8", "surrogateescape")


@dataclass
class Command:
    """One complete client command."""

    line: str  # the command line, CR stripped (e.g. "api status")
    headers: list = field(default_factory=list)  # [(name, value)] in order
    body: bytes | None = None  # client Content-Length body, if any
    text: str = ""  # the command as received minus the blank line, CRs stripped

    @property
    def word(self) -> str:
        """The command word, lower-cased ("api", "event", …)."""
        return self.line.split(" ", 1)[0].lower()

    @property
    def arg(self) -> str:
        """Everything after the first space of the command line ("" if none)."""
        return self.line.partition(" ")[2]

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


@dataclass
class ParseError:
    """A fatal input error: ``kind`` is "nul" (reply ``-ERR command parse
    error.`` first) or "content-length" / "too-long" (no reply)."""

    kind: str
    text: str = ""


_ATOI_RE = re.compile(r"[-+]?[0-9]+")


def _atoi(value: str) -> int:
    """C ``atoi``: optional sign and leading digits, 0 when there are none."""
    m = _ATOI_RE.match(value.strip())
    return int(m.group()) if m else 0


class CommandParser:
    """Incremental parser: bytes in, ``Command``/``ParseError`` out."""

    def __init__(self, max_block: int = MAX_BODY, max_body: int = MAX_BODY):
        self.max_block = max_block
        self.max_body = max_body
        self._buf = bytearray()
        self._scan = 0  # start of the line being read
        self._searched = 0  # no LF before this offset (so bytes are scanned once)
        self._lines: list[bytes] = []  # lines of the command being read
        self._block_len = 0
        self._pending: Command | None = None  # waiting for its body
        self._body_len = 0
        self.dead = False

    def feed(self, data: bytes) -> list:
        if self.dead:
            return []
        self._buf += data
        out: list = []
        buf = self._buf
        while True:
            if self._pending is not None:
                if len(buf) - self._scan < self._body_len:
                    break
                start = self._scan
                self._pending.body = bytes(buf[start:start + self._body_len])
                self._scan = start + self._body_len
                out.append(self._pending)
                self._pending = None
                continue
            nl = buf.find(b"\n", max(self._scan, self._searched))
            if nl < 0:
                self._searched = len(buf)
                if len(buf) - self._scan + self._block_len > self.max_block:
                    self.dead = True
                    out.append(ParseError("too-long"))
                break
            line = bytes(buf[self._scan:nl])
            self._scan = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if line:
                if not self._lines and line[0] == 0:
                    self.dead = True
                    out.append(ParseError("nul", decode(line)))
                    break
                self._lines.append(line)
                self._block_len += len(line) + 1
                if self._block_len > self.max_block:
                    self.dead = True
                    out.append(ParseError("too-long"))
                    break
                continue
            if not self._lines:
                continue  # blank lines before a command
            item = self._finish()
            if isinstance(item, ParseError):
                self.dead = True
                out.append(item)
                break
            if item.body is None and self._body_len:
                self._pending = item
                continue
            out.append(item)
        # drop consumed bytes now and then so the buffer does not grow
        if self._scan > 65536 or self._scan == len(buf):
            del buf[:self._scan]
            self._searched = max(0, self._searched - self._scan)
            self._scan = 0
        return out

    def _finish(self) -> Command | ParseError:
        lines = self._lines
        self._lines = []
        self._block_len = 0
        self._body_len = 0
        texts = []
        for raw in lines:
            nul = raw.find(b"\0")
            texts.append(decode(raw if nul < 0 else raw[:nul]))
        headers = []
        for text in texts[1:]:
            name, sep, value = text.partition(":")
            if not sep:
                continue
            headers.append((name.strip(), value.lstrip(" \t")))
        cmd = Command(texts[0], headers, None, "\n".join(decode(r) for r in lines))
        for name, value in headers:
            if name.lower() == "content-length":
                length = _atoi(value)
                if length < 0 or length > self.max_body:
                    return ParseError("content-length", cmd.text)
                self._body_len = length
        return cmd

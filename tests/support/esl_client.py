"""Test helpers for the simulator tests: a bare ESL client socket that reads
whole frames (independent of the code under test)."""

from __future__ import annotations

import socket
import time

BARRIER = "opensips-fs-test-barrier"  # not an ESL command: answered `-ERR command not found`, nothing else


class Frame:
    def __init__(self, header_block: bytes, body: bytes | None):
        self.header_block = header_block
        self.body = body
        self.headers: list[tuple[str, str]] = []
        for line in header_block.decode("utf-8", "surrogateescape").split("\n"):
            if line:
                name, _, value = line.partition(":")
                self.headers.append((name, value.lstrip(" ")))

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    @property
    def content_type(self) -> str | None:
        return self.header("Content-Type")

    @property
    def content(self) -> bytes:
        """The body of a frame that must have one."""
        assert self.body is not None, self
        return self.body

    @property
    def raw(self) -> bytes:
        return self.header_block + (self.body or b"")

    def __repr__(self) -> str:
        return "Frame(%r, %r)" % (self.header_block[:80], (self.body or b"")[:80])


def split_frames(data: bytes) -> tuple[list[Frame], bytes]:
    """Parse a received byte stream into frames; returns (frames, rest)."""
    frames = []
    pos = 0
    while True:
        end = data.find(b"\n\n", pos)
        if end < 0:
            break
        block = data[pos:end + 2]
        length = None
        for line in block.split(b"\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
                break
        if length is None:
            frames.append(Frame(block, None))
            pos = end + 2
            continue
        if len(data) < end + 2 + length:
            break
        frames.append(Frame(block, data[end + 2:end + 2 + length]))
        pos = end + 2 + length
    return frames, data[pos:]


class EslTestClient:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.frames: list[Frame] = []
        self.skipped: list[Frame] = []  # events that arrived while waiting for a reply
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return False
        except ConnectionResetError:
            self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        got, self.buf = split_frames(self.buf)
        self.frames.extend(got)
        return True

    def frame(self, timeout: float = 5.0) -> Frame:
        deadline = time.monotonic() + timeout
        while not self.frames:
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise TimeoutError("no frame (eof=%s, buffered %r)" % (self.eof, self.buf[:200]))
            self._fill(left)
        return self.frames.pop(0)

    def collect(self, duration: float) -> list[Frame]:
        """Every frame arriving within ``duration`` seconds."""
        deadline = time.monotonic() + duration
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._fill(left)
        out, self.frames = self.frames, []
        return out

    def wait_eof(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self._fill(deadline - time.monotonic())
        return self.eof

    def cmd(self, text: str, timeout: float = 5.0) -> Frame:
        """Send one command, return the next reply frame (skipping events)."""
        self.send(text.encode() + b"\n\n")
        deadline = time.monotonic() + timeout
        while True:
            f = self.frame(max(0.01, deadline - time.monotonic()))
            if f.content_type in ("command/reply", "api/response"):
                return f
            self.skipped.append(f)

    def sent_so_far(self, timeout: float = 5.0) -> list[Frame]:
        """Every event the server sent before now, without waiting a guessed
        time: a command the server answers with no side effect (an unknown
        word) goes out, and the frames that arrive before its reply are
        returned. The server writes one connection in order, so anything it
        queued earlier is among them."""
        before = len(self.skipped)
        reply = self.cmd(BARRIER, timeout)
        assert reply.header("Reply-Text") == "-ERR command not found", reply
        got = self.skipped[before:]
        del self.skipped[before:]
        return got

    def login(self, password: str = "ClueCon") -> "EslTestClient":
        assert self.frame().content_type == "auth/request"
        reply = self.cmd("auth " + password)
        assert reply.header("Reply-Text") == "+OK accepted"
        return self

    def close(self) -> None:
        self.sock.close()

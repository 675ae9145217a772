"""Shared helpers for the MI tests: a registry with the core, statistics,
EVI and freeswitch_scripting *declarations*, settings for servers on
ephemeral ports / tmp paths, and raw HTTP and FIFO exchanges."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import gevent
from gevent.monkey import get_original

from opensips_fs.config import HttpdSettings
from opensips_fs.mi.commands import MiCommand
from opensips_fs.mi.registry import MiRegistry
from opensips_fs.mi.core import CoreContext, core_commands, statistics_commands
from opensips_fs.mi.fifo import MiFifoServer
from opensips_fs.stats import Stats

from support import golden

real_select = get_original("select", "select")  # gevent's wait misses a FIFO hang-up

PROCESSES = ["attendant", "FS Manager", "event_stream Sender", "HTTPD 127.0.0.1:8888",
             "MI Datagram", "MI FIFO", "time_keeper", "timer"]


class HandlerReached(AssertionError):
    """A declaration-only command ran its handler: the test expected an
    error produced before the handler."""


def _declared_only(params: object) -> None:
    raise HandlerReached("declaration-only command handler called")


# Recipes of the EVI and freeswitch_scripting rooms (docs/protocols/mi.md §2.2); their
# handlers live in those rooms: here only recipe matching is exercised.
DECLARATIONS: list[tuple[str, str, str, list[list[str]], str | None]] = [
    ("evi", "subscribe", "event_subscribe", [["event", "socket"], ["event", "socket", "expire"]],
     "subscribes an event to the Event Interface"),
    ("evi", "list", "events_list", [[]], "lists all the events advertised through the Event Interface"),
    ("evi", "subscribers", "subscribers_list", [[], ["event"], ["event", "socket"]],
     "lists all the Event Interface subscribers; Params: [ event [ subscriber ]]"),
    ("evi", "raise", "raise_event", [["event"], ["event", "params"]],
     "raises an event through the Event Interface; Params: event [ params ]"),
    ("freeswitch_scripting", "subscribe", "fs_subscribe", [["freeswitch_url", "events"]], None),
    ("freeswitch_scripting", "unsubscribe", "fs_unsubscribe", [["freeswitch_url", "events"]], None),
    ("freeswitch_scripting", "list", "fs_list", [[]], None),
    ("freeswitch_scripting", "reload", "fs_reload", [[]], None),
    ("freeswitch_scripting", "esl", "freeswitch_esl", [["command", "freeswitch_url"]], None),
    ("freeswitch_scripting", "status", "fs_status", [[], ["freeswitch_url"]], None),
]


def declarations() -> list[MiCommand]:
    return [MiCommand(m, n, a, r, _declared_only, h) for m, n, a, r, h in DECLARATIONS]


class LogLevel:
    def __init__(self) -> None:
        self.level = 3

    def get(self) -> int:
        return self.level

    def set(self, level: int) -> None:
        self.level = level


class RegistryWithLevel(MiRegistry):
    """A registry that also holds the log level its core commands get and set."""

    log_level: LogLevel


def build_registry(stats: Stats | None = None, started_at: float | None = None) -> RegistryWithLevel:
    stats = stats if stats is not None else Stats()
    registry = RegistryWithLevel(stats)
    level = LogLevel()
    ctx = CoreContext(started_at if started_at is not None else time.time(), stats,
                      lambda: list(PROCESSES), level.get, level.set, registry)
    registry.register(statistics_commands(stats))
    registry.register(core_commands(ctx))
    registry.register(declarations())
    registry.log_level = level
    return registry


def httpd_settings(**overrides: Any) -> HttpdSettings:
    """The httpd settings of a test server: an ephemeral port on 127.0.0.1."""
    values: dict[str, Any] = dict(ip="127.0.0.1", port=0)
    values.update(overrides)
    return HttpdSettings(**values)


def load_golden(name: str) -> dict:
    return golden.load("opensips", name)


def fs_list_result(exchange: dict) -> bool:
    """The recorded HTTP reply is a result of the fs_list handler (scripting
    room): test_mi_app replays these through the real App, the MI-only
    tests leave them out."""
    request = exchange.get("request_body") or exchange.get("request_raw") or ""
    return '"fs_list"' in request and '"result"' in (exchange.get("response_raw") or "")


def latin1(text: str) -> bytes:
    return text.encode("latin-1")


def http_exchange(address: tuple[str, int], raw: bytes, timeout: float = 5.0) -> bytes:
    """Send raw request bytes, read until the server closes."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(raw)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def read_http_response(sock: socket.socket, buffer: bytearray) -> bytes:
    """Read exactly one Content-Length framed response from a keep-alive socket."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a full response")
        buffer += data
    head_end = buffer.index(b"\r\n\r\n") + 4
    length = 0
    for line in bytes(buffer[:head_end]).split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(buffer) < head_end + length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed mid-body")
        buffer += data
    response = bytes(buffer[:head_end + length])
    del buffer[:head_end + length]
    return response


_SERVER = re.compile(rb'("result":\{"Server":"[^"]*")')


def emu_version(raw: bytes) -> bytes:
    """A recorded OpenSIPS reply as opensips-fs sends it: [EMU] `version` adds
    `"opensips-fs":"<version>"` after `Server` (HTTP Content-Length fixed)."""
    from opensips_fs import __version__
    ours = _SERVER.sub(lambda m: m.group(1) + b',"opensips-fs":"' + __version__.encode() + b'"', raw)
    if ours == raw or b"\r\n\r\n" not in ours:
        return ours
    head, _, body = ours.partition(b"\r\n\r\n")
    head = re.sub(rb"Content-Length: \d+", b"Content-Length: %d" % len(body), head)
    return head + b"\r\n\r\n" + body


def mask_date(raw: bytes) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = [b"Date: <masked>" if line.startswith(b"Date: ") else line for line in head.split(b"\r\n")]
    return b"\r\n".join(lines) + sep + body


def split_response(raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(b":") for line in lines[1:])]
    return lines[0], headers, body


def mkfifo_reply(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    os.mkfifo(path, 0o600)
    return path


def write_fifo(server: MiFifoServer, data: bytes) -> None:
    fd = os.open(server.path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_reply(path: str | Path, timeout: float = 5.0) -> bytes:
    """Read a reply FIFO to EOF as clients do, without blocking the hub: a
    non-blocking read end only polls readable once a writer has come (data,
    or the hang-up after a writer that wrote nothing). The kernel's own
    select() is polled: gevent's wait does not report a FIFO hang-up."""
    fd = os.open(str(path), os.O_RDONLY | os.O_NONBLOCK)
    chunks: list[bytes] = []
    try:
        with gevent.Timeout(timeout):
            while True:
                if not real_select([fd], [], [], 0)[0]:
                    gevent.sleep(0.002)
                    continue
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    return b"".join(chunks)
                chunks.append(data)
    finally:
        os.close(fd)

"""MI over datagrams (`mi_datagram`): UDP or unix datagram sockets.

`socket_name` is `udp:<ip>:<port>` or a unix socket path (optionally
prefixed `unix:`). One request per datagram, one reply datagram sent to the
request's source (MI.md §6.3): compact JSON; nothing for a notification;
the 15-byte text `400 Parse_error` for invalid JSON and `500 Internal error`
for a reply too big for one datagram, as OpenSIPS does. Each datagram is
answered by its own greenlet (a bounded pool), so a slow command does not
hold up the others.
"""

from __future__ import annotations

import logging
import os

import gevent
from gevent import socket
from gevent.pool import Pool

from ..config import split_udp
from ..stats import Stats
from . import StartupError
from .jsonrpc import PARSE_ERROR_REPLY

__all__ = ["MiDatagramServer", "parse_socket_name"]

log = logging.getLogger(__name__)

PARSE_ERROR_TEXT = b"400 Parse_error"
INTERNAL_ERROR_TEXT = b"500 Internal error"
MAX_REPLY = 65457          # OpenSIPS' reply buffer
MAX_DATAGRAM = 65535
CONCURRENCY = 256


def parse_socket_name(name: str):
    """(family, address) for `udp:ip:port`, `unix:/path` or `/path`."""
    if name.startswith("udp:"):
        address = split_udp(name)
        if address is None:
            raise StartupError(f"mi_datagram: bad socket_name {name!r} (udp:IP:PORT)")
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        return family, address
    path = name[5:] if name.startswith("unix:") else name
    if not path:
        raise StartupError(f"mi_datagram: bad socket_name {name!r}")
    return socket.AF_UNIX, path


class MiDatagramServer:
    def __init__(self, mi_datagram_settings, registry, stats: Stats):
        self.socket_name = mi_datagram_settings.socket_name
        self.registry = registry
        self._sock: socket.socket | None = None
        self._reader: gevent.Greenlet | None = None
        self._pool = Pool(CONCURRENCY)
        self._family, self._bind_to = parse_socket_name(self.socket_name)
        self._requests = stats.counter("mi", "datagram_requests")
        self._send_failures = stats.counter("mi", "datagram_send_failures")

    @property
    def address(self):
        if self._sock is None:
            return self._bind_to
        return self._sock.getsockname()

    def start(self) -> "MiDatagramServer":
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            if self._family == socket.AF_UNIX and os.path.exists(self._bind_to):
                os.unlink(self._bind_to)
            sock.bind(self._bind_to)
        except OSError as err:
            sock.close()
            raise StartupError(f"mi_datagram: cannot bind {self.socket_name}: {err.strerror or err}") from None
        self._sock = sock
        self._reader = gevent.spawn(self._read_loop)
        log.info("MI datagram listening on %s", self.socket_name)
        return self

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.kill()
            self._reader = None
        self._pool.kill()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            if self._family == socket.AF_UNIX:
                try:
                    os.unlink(self._bind_to)
                except OSError:
                    pass

    def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None  # start() bound it before spawning this loop
        while True:
            try:
                data, source = sock.recvfrom(MAX_DATAGRAM)
            except OSError as err:
                log.error("MI datagram receive failed: %s", err)
                gevent.sleep(0.1)
                continue
            self._requests.value += 1
            self._pool.spawn(self._answer, data, source)

    def _answer(self, data: bytes, source) -> None:
        reply = self.registry.handle(data)
        sock = self._sock
        if reply is None or not source or sock is None:
            return
        if reply is PARSE_ERROR_REPLY:
            reply = PARSE_ERROR_TEXT
        elif len(reply) > MAX_REPLY:
            reply = INTERNAL_ERROR_TEXT
        try:
            sock.sendto(reply, source)
        except OSError as err:
            self._send_failures.value += 1
            log.warning("MI datagram reply to %s failed: %s", source, err)

"""MI over datagrams (`mi_datagram`): UDP or unix datagram sockets.

`socket_name` is `udp:<ip>:<port>` or a unix socket path (optionally
prefixed `unix:`). One request per datagram, one reply datagram sent to the
request's source (docs/protocols/mi.md §6.3): compact JSON; nothing for a notification;
the 15-byte text `400 Parse_error` for invalid JSON, as OpenSIPS does. A
reply too big for one datagram (over 65,457 bytes, OpenSIPS's buffer — e.g.
`fs_list` with many sockets) is replaced by a JSON-RPC error with the
request's id saying so, where OpenSIPS sends the text `500 Internal error`
that clients cannot decode (opensips-cli: "could not decode json ... Is
OpenSIPS running?"); it is counted (`datagram_oversize_replies`) and
logged. Each datagram is
answered by its own greenlet (a bounded pool), so a slow command does not
hold up the others.
"""

from __future__ import annotations

import logging
import os

import gevent
from gevent import socket
from gevent.pool import Pool

from ..config import MiDatagramSettings, split_udp
from ..reasons import short_reason
from ..stats import Stats
from . import StartupError
from .jsonrpc import PARSE_ERROR_REPLY, encode_error
from .registry import MiRegistry

Address = tuple[str, int] | str  # (ip, port) or a unix socket path

__all__ = ["MAX_REPLY", "MiDatagramServer", "oversize_reply", "parse_socket_name"]

log = logging.getLogger(__name__)

PARSE_ERROR_TEXT = b"400 Parse_error"
MAX_REPLY = 65457          # OpenSIPS' reply buffer
MAX_DATAGRAM = 65535
CONCURRENCY = 256
_ID_MEMBER = b',"id":'


def oversize_reply(reply: bytes) -> bytes:
    """The error sent instead of `reply` (one of ours, too big for a
    datagram): same id. The id is the reply's last member, and `,"id":`
    cannot occur inside a JSON string (its quotes would be escaped)."""
    request_id = reply[reply.rfind(_ID_MEMBER) + len(_ID_MEMBER):-1]
    return encode_error(-32000, "Server error",
                        f"reply too large for a datagram ({len(reply)} bytes, at most {MAX_REPLY}): "
                        "use MI HTTP or FIFO", None)[:-len(b"null}")] + request_id + b"}"


def parse_socket_name(name: str) -> tuple[int, Address]:
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
    def __init__(self, mi_datagram_settings: MiDatagramSettings, registry: MiRegistry, stats: Stats):
        self.socket_name = mi_datagram_settings.socket_name
        self.registry = registry
        self._sock: socket.socket | None = None
        self._reader: gevent.Greenlet | None = None
        self._pool = Pool(CONCURRENCY)
        self._family, self._bind_to = parse_socket_name(self.socket_name)
        self._requests = stats.counter("mi", "datagram_requests", "MI requests received over the datagram socket")
        self._send_failures = stats.counter("mi", "datagram_send_failures", "datagram replies that could not be sent")
        self._oversize = stats.counter("mi", "datagram_oversize_replies",
                                       "datagram replies too large for one datagram (answered with an error)")

    @property
    def address(self) -> Address:
        if self._sock is None:
            return self._bind_to
        return self._sock.getsockname()

    def start(self) -> "MiDatagramServer":
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            if isinstance(self._bind_to, str) and os.path.exists(self._bind_to):  # a unix path
                os.unlink(self._bind_to)
            sock.bind(self._bind_to)
        except OSError as err:
            sock.close()
            raise StartupError(f"mi_datagram: cannot bind {self.socket_name}: {short_reason(err)}") from None
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
            if isinstance(self._bind_to, str):  # a unix path
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

    def _answer(self, data: bytes, source: Address) -> None:
        reply = self.registry.handle(data, "datagram")
        sock = self._sock
        if reply is None or not source or sock is None:
            return
        if reply is PARSE_ERROR_REPLY:
            reply = PARSE_ERROR_TEXT
        elif len(reply) > MAX_REPLY:
            self._oversize.value += 1
            log.warning("MI datagram reply to %r is %d bytes, over %d: error sent instead",
                        source, len(reply), MAX_REPLY)
            reply = oversize_reply(reply)
        try:
            sock.sendto(reply, source)
        except OSError as err:
            self._send_failures.value += 1
            log.warning("MI datagram reply to %s failed: %s", source, err)

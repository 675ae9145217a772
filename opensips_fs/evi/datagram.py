"""`event_datagram` delivery: `udp:host:port` and `unix:/path` (EVI.md §4.3).

One JSON-RPC notification per datagram, no framing, nothing read back. The
sender uses a real non-blocking socket and waits for writability through
gevent only when the kernel buffer is full, so the common case is one
`sendto` system call per payload. A payload that cannot be a datagram
(over 65507 bytes on UDP, or EMSGSIZE) is counted as a send error and
logged, never cut.
"""

from __future__ import annotations

import errno
import socket as _stdsocket

import _socket
import gevent
from gevent.socket import wait_write

from .delivery import Destination, log

__all__ = ["DatagramDestination", "MAX_UDP_PAYLOAD"]

MAX_UDP_PAYLOAD = 65507
_YIELD_EVERY = 512


class DatagramDestination(Destination):
    """A UDP address (`address` = (ip, port)) or a unix datagram path."""

    def __init__(self, key, label, queue_size, counters, address):
        super().__init__(key, label, queue_size, counters)
        self.address = address
        self.transport = "unix" if isinstance(address, str) else "udp"
        family = _stdsocket.AF_UNIX if self.transport == "unix" else _stdsocket.AF_INET
        self._sock = _socket.socket(family, _stdsocket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self.state = "ready"

    def deliver(self) -> None:
        queue = self.queue
        sock = self._sock
        address = self.address
        sendto = sock.sendto
        popleft = queue.popleft
        sent = 0
        try:
            while queue and sent < _YIELD_EVERY:
                payload = queue[0]
                try:
                    sendto(payload, address)
                except BlockingIOError:
                    wait_write(sock.fileno(), timeout=5.0)
                    continue
                except OSError as exc:
                    popleft()
                    self._lost(payload, exc)
                    continue
                popleft()
                sent += 1
        finally:
            if sent:
                self._delivered(sent)
        if queue:
            gevent.sleep(0)  # let the raising greenlets run between batches

    def _lost(self, payload: bytes, exc: OSError) -> None:
        """A datagram that cannot be sent is lost: count it, keep going."""
        if exc.errno == errno.EMSGSIZE or len(payload) > MAX_UDP_PAYLOAD:
            exc = OSError(exc.errno, f"payload of {len(payload)} bytes too big for a datagram")
        self.send_errors += 1
        self.counters.errors.value += 1
        message = str(exc)
        if message != self.last_error:
            log.warning("EVI %s: %s", self.label, message)
        self.last_error = message

    def close(self) -> None:
        pass  # the socket lives as long as the destination

    def stop(self) -> None:
        super().stop()
        self._sock.close()

"""`event_stream` delivery: `tcp:host:port[/method]` and `jsonrpc:` (docs/protocols/evi.md §4.4).

One persistent connection per destination host:port, shared by every
subscriber of it; payloads written back to back with no delimiter; whatever
the peer sends is read and ignored. Opened on the first payload, reopened
when the peer closed it. [EMU] connect and write timeouts (5 s); a batch
that could not be written stays queued and is written again on the next
connection (at-least-once), retried at least once a second.
"""

from __future__ import annotations

import socket

import gevent
from gevent import socket as gsocket

from .delivery import Destination

__all__ = ["StreamDestination", "CONNECT_TIMEOUT", "WRITE_TIMEOUT"]

CONNECT_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0
_BATCH_BYTES = 256 * 1024


class StreamDestination(Destination):
    transport = "tcp"
    # evi/delivery.py's Destination declares _conn untyped (None)
    _conn: gsocket.socket | None  # type: ignore[assignment]

    def __init__(self, key, label, queue_size, counters, address):
        super().__init__(key, label, queue_size, counters)
        self.address = address

    def _connect(self) -> None:
        self.state = "connecting"
        sock = gsocket.create_connection(self.address, timeout=CONNECT_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(WRITE_TIMEOUT)
        self._conn = sock
        self.state = "connected"

    def _peer_closed(self) -> bool:
        """Read (and ignore) what the peer sent; True when it closed."""
        conn = self._conn
        assert conn is not None  # deliver() checks it
        raw = conn._sock  # type: ignore[attr-defined]  # the real socket: gevent's recv would wait
        while True:
            try:
                data = raw.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True
            if not data:
                return True

    def deliver(self) -> None:
        if self._conn is not None and self._peer_closed():
            self.close()
        if self._conn is None:
            self._connect()
        if not self.inflight:
            queue = self.queue
            batch: list[bytes] = []
            size = 0
            while queue and len(batch) < self.batch and size < _BATCH_BYTES:
                payload = queue.popleft()
                batch.append(payload)
                size += len(payload)
            self.inflight = batch
        data = b"".join(self.inflight)
        assert self._conn is not None  # connected above
        try:
            self._conn.sendall(data)
        except OSError:
            self._retrying(len(self.inflight))
            raise
        self._delivered(len(self.inflight))
        self.inflight = []
        if self.queue:
            gevent.sleep(0)

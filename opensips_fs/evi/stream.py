"""`event_stream` delivery: `tcp:host:port[/method]` and `jsonrpc:` (docs/protocols/evi.md §4.4).

One persistent connection per destination host:port, shared by every
subscriber of it; payloads written back to back with no delimiter; whatever
the peer sends is read and ignored. Opened on the first payload, reopened
when the peer closed it. [EMU] connect and write timeouts (5 s); a batch
that could not be written stays queued and is written again on the next
connection (at-least-once), retried at least once a second.

Nothing written is lost silently when the connection then fails (the peer
resets it, or closes it before reading everything): the payloads written on
the connection are remembered until the kernel says the peer acknowledged
their bytes (`SIOCOUTQ`, the bytes of the send queue not acknowledged yet),
and the ones it had not acknowledged when the connection failed are written
again on the next connection (counted in `retried`; the peer may see one
twice, never out of order). The connection is watched while the queue is
empty too, so a reset after the last write is noticed. Bytes the peer's
kernel acknowledged but its program never read are beyond what a sender
can know.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import termios
from collections import deque
from typing import Any

import gevent
from gevent import socket as gsocket

from .delivery import Destination, EviCounters

__all__ = ["StreamDestination", "CONNECT_TIMEOUT", "WRITE_TIMEOUT"]

CONNECT_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0
WATCH_INTERVAL = 0.1       # how often an idle connection with unacknowledged bytes is checked
_BATCH_EVENTS = 256
_BATCH_BYTES = 256 * 1024
_SIOCOUTQ = termios.TIOCOUTQ            # the same request number on Linux
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_ALIVE_STATES = (1, 8)                  # TCP_ESTABLISHED, TCP_CLOSE_WAIT


class StreamDestination(Destination):
    transport = "tcp"
    log = logging.getLogger(__name__)
    _conn: gsocket.socket | None

    def __init__(self, key: tuple, label: str, queue_size: int, counters: EviCounters,
                 address: tuple[str, int], **limits: Any):
        super().__init__(key, label, queue_size, counters, **limits)
        self.address = address
        self._unacked: deque[bytes] = deque()   # written on this connection, maybe not acknowledged
        self._unacked_bytes = 0

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

    def _not_acknowledged(self) -> int | None:
        """Bytes of the send queue the peer has not acknowledged, or None
        when the connection is no longer established (a reset empties the
        send queue: its figure would say everything arrived)."""
        conn = self._conn
        if conn is None:
            return None
        try:
            raw = fcntl.ioctl(conn.fileno(), _SIOCOUTQ, b"\0\0\0\0")
            state = conn.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0]
        except OSError:
            return None
        return struct.unpack("i", raw)[0] if state in _ALIVE_STATES else None

    def _confirm(self) -> bool:
        """Forget the written payloads the peer acknowledged; False when the
        connection failed (the unacknowledged ones were put back)."""
        pending = self._not_acknowledged()
        if pending is None or self._peer_closed():
            lost = len(self._unacked)
            self._connection_lost()
            if lost:
                self._failed(ConnectionError(
                    f"connection lost with {lost} notifications not acknowledged: "
                    "writing them again"))
            return False
        unacked = self._unacked
        while unacked and self._unacked_bytes - len(unacked[0]) >= pending:
            self._unacked_bytes -= len(unacked.popleft())
        return True

    def _connection_lost(self) -> None:
        """The connection failed: what it did not acknowledge goes first
        into the next one."""
        if self._unacked:
            self._retrying(len(self._unacked))
            self.inflight = list(self._unacked) + self.inflight
            self._unacked.clear()
            self._unacked_bytes = 0
        self._close_quietly()

    def deliver(self) -> None:
        if self._conn is not None:
            self._confirm()                # a lost connection puts its window back first
        if self._conn is None:
            self._connect()
        if not self.inflight:
            queue = self.queue
            batch: list[bytes] = []
            size = 0
            while queue and len(batch) < _BATCH_EVENTS and size < _BATCH_BYTES:
                payload = queue.popleft()
                batch.append(payload)
                size += len(payload)
            self.inflight = batch
        assert self._conn is not None  # connected above
        batch = self.inflight
        data = b"".join(batch) if len(batch) > 1 else batch[0]
        view = memoryview(data)
        total = len(data)
        written = 0
        send = self._conn.send
        try:
            while written < total:
                written += send(view[written:])
        except OSError:
            self._written_part(batch, written)
            self._connection_lost()
            raise
        finally:
            view.release()
        self.inflight = []
        self._unacked.extend(batch)
        self._unacked_bytes += total
        self._delivered(len(batch))
        self._confirm()
        if self.queue:
            gevent.sleep(0)

    def _written_part(self, batch: list, written: int) -> None:
        """A batch failed after `written` bytes: the payloads begun go to the
        unacknowledged window, the others stay in `inflight`."""
        done = 0
        for i, payload in enumerate(batch):
            if done >= written:
                self.inflight = batch[i:]
                return
            self._unacked.append(payload)
            self._unacked_bytes += len(payload)
            done += len(payload)
        self.inflight = []

    def idle_wait(self) -> None:
        """Queue empty: until the next payload, check every WATCH_INTERVAL
        that what was written last gets acknowledged (a reset puts it back)."""
        while self._unacked and self._conn is not None:
            if self._wakeup.wait(WATCH_INTERVAL):
                return
            if not self._confirm():
                self._idle = False     # the window is back in inflight: deliver it
                return
        self._wakeup.wait()

    def unconfirmed(self) -> int:
        return len(self._unacked)

    def close(self) -> None:
        super().close()
        # a closed connection's window can no longer be confirmed
        self._unacked.clear()
        self._unacked_bytes = 0

"""A TCP listener served by one accept greenlet, for the simulated boxes and
the control socket: it can be closed and the same port bound again at once
(``FsSimulator.restart`` with no down time)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from gevent import socket  # cooperative even without monkey-patching

__all__ = ["Listener"]


class Listener:
    """Listens on ``host:port`` (port 0: ephemeral, ``port`` is set on
    ``open()``) and calls ``on_accept(sock, addr)`` for each connection,
    in the accept greenlet (so it must not block)."""

    def __init__(self, host: str, port: int, on_accept: Callable[[socket.socket, Any], None],
                 backlog: int = 128):
        self.host = host
        self.port = port
        self.on_accept = on_accept
        self.backlog = backlog
        self._sock: socket.socket | None = None
        self._glet: gevent.Greenlet | None = None

    def open(self) -> "Listener":
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            # connections of the previous run linger (TIME_WAIT) on this port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(self.backlog)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._glet = gevent.spawn(self._accept_loop, sock)
        return self

    def close(self) -> None:
        """Stop accepting and close the socket now: the port can be bound
        again as soon as this returns."""
        # gevent only defers closing a socket that a greenlet is blocked on
        # (until that greenlet has been woken), and a bind() before then fails
        # with EADDRINUSE: so the accept greenlet must be gone first.
        glet, self._glet = self._glet, None
        if glet is not None and glet is not gevent.getcurrent():
            glet.kill(block=True)
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _accept_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, addr = sock.accept()
            except OSError:
                return
            self.on_accept(conn, addr)

"""EVI subscribers for the tests: receive and record events.

`UdpSink`, `TcpSink` and `HttpSink` listen on 127.0.0.1 (ephemeral port by
default), record every payload with its arrival time (`time.time()`), and
give their `socket` string for `event_subscribe`. `TcpSink` splits the
stream of back-to-back JSON documents as a real consumer must; it can go
away (`pause()`: close the listener and every connection) and come back on
the same port (`resume()`). `HttpSink` answers each POST with a settable
status.

(To watch events by hand, `python -m opensips_fs.tools.evi_print`
subscribes over MI and prints them.)
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

__all__ = ["UdpSink", "TcpSink", "HttpSink", "split_documents"]

_decoder = json.JSONDecoder()


def split_documents(buffer: str) -> tuple[list[Any], str]:
    """Parse concatenated JSON values; return (documents, unparsed rest)."""
    docs = []
    pos = 0
    end = len(buffer)
    while pos < end:
        while pos < end and buffer[pos] in " \t\r\n":
            pos += 1
        if pos == end:
            break
        try:
            doc, pos = _decoder.raw_decode(buffer, pos)
        except ValueError:
            break
        docs.append(doc)
    return docs, buffer[pos:]


class _Sink:
    host: str
    port: int

    def __init__(self) -> None:
        self.payloads: list[bytes] = []   # one per datagram / document / request
        self.times: list[float] = []
        self._changed = Event()

    def _record(self, payload: bytes) -> None:
        self.payloads.append(payload)
        self.times.append(time.time())
        self._changed.set()

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least `count` payloads arrived."""
        deadline = time.monotonic() + timeout
        while len(self.payloads) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            self._changed.wait(min(left, 0.05))
        return True

    def documents(self) -> list:
        return [json.loads(p) for p in self.payloads]

    def _listen(self) -> gsocket.socket:
        """A TCP listener on (host, port); `port` becomes the bound one, so a
        paused sink resumes on the same port."""
        listener = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        return listener


class UdpSink(_Sink):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, rcvbuf: int = 8 << 20):
        super().__init__()
        self.sock = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()
        self._greenlet = gevent.spawn(self._run)

    @property
    def socket(self) -> str:
        return f"udp:{self.host}:{self.port}"

    def _run(self) -> None:
        recv = self.sock.recv
        while True:
            self._record(recv(65535))

    def close(self) -> None:
        self._greenlet.kill()
        self.sock.close()


class TcpSink(_Sink):
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__()
        self.host = host
        self.port = port
        self.chunks: list[bytes] = []      # every read, as received
        self.connections = 0
        self._listener: gsocket.socket | None = None
        self._conns: list[gsocket.socket] = []
        self._greenlets: list[gevent.Greenlet] = []
        self.resume()

    @property
    def socket(self) -> str:
        return f"tcp:{self.host}:{self.port}"

    def resume(self) -> None:
        listener = self._listen()
        self._listener = listener
        self._greenlets.append(gevent.spawn(self._accept, listener))

    def _accept(self, listener: gsocket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            self.connections += 1
            self._conns.append(conn)
            self._greenlets.append(gevent.spawn(self._read, conn))

    def _read(self, conn: gsocket.socket) -> None:
        buffer = ""
        pending = b""
        while True:
            try:
                data = conn.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)
            pending += data
            try:
                text = pending.decode("utf-8")
            except UnicodeDecodeError:
                continue   # a multi-byte character split between reads
            pending = b""
            buffer += text
            docs, buffer = split_documents(buffer)
            for doc in docs:
                self._record(json.dumps(doc, ensure_ascii=False,
                                        separators=(",", ":")).encode())

    def pause(self) -> None:
        """Go away: stop listening and drop every connection."""
        for greenlet in self._greenlets:
            greenlet.kill()
        self._greenlets = []
        for conn in self._conns:
            conn.close()
        self._conns = []
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    close = pause


class HttpSink(_Sink):
    """A keep-alive HTTP/1.1 server recording POST bodies (gevent.pywsgi)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, path: str = "/events"):
        super().__init__()
        self.path = path
        self.status = "200 OK"
        self.requests: list[dict] = []
        self._server_class = WSGIServer
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self.resume()

    @property
    def socket(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = environ["wsgi.input"].read()
        self.requests.append({"method": environ["REQUEST_METHOD"],
                              "path": environ["PATH_INFO"],
                              "content_type": environ.get("CONTENT_TYPE"),
                              "authorization": environ.get("HTTP_AUTHORIZATION")})
        status = self.status
        if status.startswith("2"):
            self._record(body)
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]

    def resume(self) -> None:
        listener = self._listen()
        # a pool, so that stop() also kills the keep-alive connections
        server = self._server = self._server_class(listener, self._app, spawn=Pool(1000),
                                                   log=None, error_log=None)
        server.start()

    def pause(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=0)
            self._server = None

    close = pause

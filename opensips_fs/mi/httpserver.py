"""The HTTP/1.1 connection engine under MI HTTP: accept, frame, reply, limits.

`HttpConnections(respond, ...)` listens on a socket and serves every
connection with `httpwire.RequestParser`, calling `respond(request) ->
(reply bytes, keep the connection open)` for each complete request. It knows
nothing of MI; `http.MiHttpServer` gives it the routing.

Fast on the common path (many keep-alive clients asking small questions):

* one greenlet per connection, on a plain non-blocking socket with an I/O
  watcher created once: per request one wait for readability (a switch to the
  hub and back), one `recv_into` a buffer shared by all connections, one
  `send` of the whole reply — no `recv` that can only fail with EAGAIN right
  after a reply, no timer started and stopped per request;
* time limits are enforced by one sweeper greenlet (every quarter of the
  limit, at most every second) instead of a timer per wait: an idle
  keep-alive connection is closed after `timeout` seconds, a request must
  arrive whole within `timeout` of its first byte (else 408 and close);
* a reply that does not fit the socket buffer is finished with a timed
  wait (a client that stops reading is cut off after `timeout`).

Limits are ours: at most `max_connections` open connections (by default
1,000, or half the process's file-descriptor limit if that is lower, so
that MI clients can never take the descriptors ESL sockets and subscribers
need). When the cap or the descriptor limit (EMFILE/ENFILE) is hit, the oldest
idle keep-alive connection is closed to make room; with none to close, a
new connection is refused (closed at once) and accepting backs off for a
moment; each such event is counted and logged at most once per
`LOG_INTERVAL` — never a traceback per attempt.

TLS connections use gevent's SSL socket (blocking style with timeouts): the
handshake and the record layer need it; they are framed and routed the same
way.
"""

from __future__ import annotations

import errno
import logging
import resource
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable

import gevent
from gevent import socket as gsocket
from gevent import ssl
from gevent.hub import get_hub
from gevent.monkey import get_original

from ..reasons import short_reason
from ..stats import Stats
from .httpwire import CONTINUE, CONTINUE_RESPONSE, NEED_DATA, HttpError, HttpRequest, RequestParser, encode_response

if TYPE_CHECKING:
    import socket

    from gevent._types import _IoWatcher

__all__ = ["DEFAULT_MAX_CONNECTIONS", "HttpConnections", "LOG_INTERVAL", "default_max_connections", "listen"]

log = logging.getLogger(__name__)

RECV_SIZE = 65536
FAIRNESS_BATCH = 16        # requests served in a row before yielding to other connections
LOG_INTERVAL = 10.0        # s between two log lines about the same limit being hit
ACCEPT_BACKOFF = 0.1       # s without accepting after EMFILE with nothing to close
DEFAULT_MAX_CONNECTIONS = 1000


def default_max_connections() -> int:
    """1,000, or half the file-descriptor limit if that is lower."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return DEFAULT_MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, soft // 2))


READ, WRITE = 1, 2  # libev I/O watcher events

# The standard library's socket class even when gevent has patched the module:
# connections are served on plain non-blocking sockets and our own watchers.
_PlainSocket = get_original("socket", "socket")

Respond = Callable[[HttpRequest], "tuple[bytes, bool]"]


def listen(ip: str, port: int, backlog: int = 1024) -> socket.socket:
    """A plain listening TCP socket on ip:port (OSError if it cannot be)."""
    sock = _PlainSocket(gsocket.AF_INET6 if ":" in ip else gsocket.AF_INET, gsocket.SOCK_STREAM)
    try:
        sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class _Expired(Exception):
    """Thrown into a connection waiting for bytes by the sweeper."""


class _Connection:
    """One accepted connection's state (owned by its greenlet)."""

    __slots__ = ("sock", "reader", "parser", "last_reply", "first_byte", "busy", "greenlet")

    def __init__(self, sock: socket.socket, reader: _IoWatcher | None, parser: RequestParser, now: float):
        self.sock = sock
        self.reader = reader          # the read watcher, made once (None for TLS)
        self.parser = parser
        self.last_reply = now         # when it last became idle (accepted or replied)
        self.first_byte: float | None = None   # when the request being received began
        self.busy = False             # a request is being answered
        self.greenlet: gevent.Greenlet | None = None


def _close_fd(fd: int) -> None:
    _close_quietly(_PlainSocket(fileno=fd))


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class _RateLimitedLog:
    def __init__(self, interval: float = LOG_INTERVAL):
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" ({suppressed} more since the last such message)"
        log.warning(message, *args)


class HttpConnections:
    """Accepts and serves HTTP/1.1 connections; see the module docstring."""

    def __init__(self, respond: Respond, stats: Stats, *, timeout: float, max_body: int,
                 max_connections: int | None = None, tls: ssl.SSLContext | None = None):
        self.respond = respond
        self.timeout = timeout
        self.max_body = max_body
        self.max_connections = max_connections or default_max_connections()
        self._tls = tls
        self._hub = get_hub()
        self._listener: socket.socket | None = None
        self._acceptor: gevent.Greenlet | None = None
        self._sweeper: gevent.Greenlet | None = None
        self._buffer = bytearray(RECV_SIZE)   # shared: one greenlet runs at a time
        self._view = memoryview(self._buffer)
        # Connections by age of their last reply (oldest first).
        self._connections: OrderedDict[_Connection, None] = OrderedDict()
        self._limit_log = _RateLimitedLog()
        self._requests = stats.counter("mi", "http_requests", "HTTP requests received by the httpd listener")
        self._rejected = stats.counter("mi", "http_rejected", "HTTP requests refused (bad request, auth, size, method)")
        self._accepted = stats.counter("mi", "http_connections", "HTTP connections accepted")
        self._timeouts = stats.counter("mi", "http_timeouts",
                                       "HTTP connections closed for a slow request, reply or idleness")
        self._refused = stats.counter("mi", "http_connections_refused",
                                      "HTTP connections refused at max_connections or out of file descriptors")
        self._evicted = stats.counter("mi", "http_idle_closed_for_room",
                                      "idle HTTP connections closed to make room for a new one")
        stats.gauge("mi", "http_open_connections", lambda: len(self._connections),
                    "HTTP connections open now")

    # -- life cycle -----------------------------------------------------------

    @property
    def address(self) -> tuple[str, int] | None:
        return self._listener.getsockname()[:2] if self._listener is not None else None

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def start(self, listener: socket.socket) -> None:
        """Serve on `listener` (a bound, listening socket; ours from now on)."""
        listener.setblocking(False)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and self.max_connections > soft // 2:
            log.warning("httpd max_connections %d is over half the file-descriptor limit (%d): "
                        "raise the limit (ulimit -n, LimitNOFILE) or lower max_connections",
                        self.max_connections, soft)
        self._listener = listener
        self._acceptor = gevent.spawn(self._accept_loop)
        self._sweeper = gevent.spawn(self._sweep_loop)

    def stop(self) -> None:
        for greenlet in (self._acceptor, self._sweeper):
            if greenlet is not None:
                greenlet.kill()
        self._acceptor = self._sweeper = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in list(self._connections):
            if conn.greenlet is not None:
                conn.greenlet.kill(block=False)
        gevent.sleep(0)

    # -- accepting ------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None   # start() set it before spawning us
        watcher = self._hub.loop.io(listener.fileno(), READ)
        wait = self._hub.wait
        while True:
            wait(watcher)
            while True:   # take every pending connection
                try:
                    # _accept(): accept() would wrap the new fd in the
                    # module's (patched) socket class.
                    fd, _ = listener._accept()  # type: ignore[attr-defined]  # typeshed lacks socket._accept
                except BlockingIOError:
                    break
                except OSError as err:
                    if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        self._out_of_descriptors(err)
                        break
                    if err.errno in (errno.ECONNABORTED, errno.EINTR, errno.EPROTO):
                        continue
                    self._limit_log.warning("accept", "MI HTTP accept failed: %s", err)
                    gevent.sleep(ACCEPT_BACKOFF)
                    break
                if len(self._connections) >= self.max_connections and not self._make_room():
                    self._refused.value += 1
                    self._limit_log.warning(
                        "cap", "MI HTTP: %d connections open (max_connections), none idle: "
                        "new connection refused", len(self._connections))
                    _close_fd(fd)
                    continue
                self._accepted.value += 1
                conn = self._open(_PlainSocket(fileno=fd))
                conn.greenlet = gevent.spawn(self._serve, conn)

    def _out_of_descriptors(self, err: OSError) -> None:
        closed = self._make_room()
        self._limit_log.warning(
            "emfile", "MI HTTP cannot accept: %s (%d connections open); %s",
            short_reason(err), len(self._connections),
            "closed the oldest idle one" if closed else "no idle connection to close, backing off")
        if not closed:
            self._refused.value += 1
            gevent.sleep(ACCEPT_BACKOFF)

    def _make_room(self) -> bool:
        """Close the idle keep-alive connection that has been idle longest."""
        for conn in self._connections:
            if not conn.busy and conn.first_byte is None:
                self._evicted.value += 1
                self._close(conn)
                return True
        return False

    def _open(self, sock: socket.socket) -> _Connection:
        sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        now = time.monotonic()
        parser = RequestParser(max_body=self.max_body)
        if self._tls is not None:
            conn = _Connection(gsocket.socket(fileno=sock.detach()), None, parser, now)
        else:
            sock.setblocking(False)
            conn = _Connection(sock, self._hub.loop.io(sock.fileno(), READ), parser, now)
        self._connections[conn] = None
        return conn

    def _close(self, conn: _Connection) -> None:
        """Forget `conn` and close its socket; its greenlet, if waiting for
        bytes, ends (its wait is cancelled)."""
        if self._connections.pop(conn, False) is False:
            return
        other = conn.greenlet is not None and conn.greenlet is not gevent.getcurrent()
        if conn.reader is not None:
            # A greenlet waiting on the watcher gets _Expired; the fd is
            # closed only once the watcher is (as gevent's own sockets do).
            self._hub.cancel_waits_close_and_then([conn.reader], _Expired, _close_quietly, conn.sock)
            return
        if other and conn.greenlet is not None:
            conn.greenlet.kill(block=False)
        _close_quietly(conn.sock)

    # -- time limits ----------------------------------------------------------

    def _sweep_loop(self) -> None:
        interval = max(0.05, min(1.0, self.timeout / 4))
        while True:
            gevent.sleep(interval)
            self.sweep()

    def sweep(self) -> None:
        """Close idle connections past the timeout; answer 408 to requests
        not whole within the timeout of their first byte."""
        now = time.monotonic()
        limit = now - self.timeout
        expired = []
        for conn in self._connections:
            if conn.last_reply > limit:
                break   # ordered by last reply; a request's first byte is later still
            if conn.busy:
                continue
            if conn.first_byte is None or conn.first_byte <= limit:
                expired.append(conn)
        for conn in expired:
            if conn.first_byte is not None:
                self._timeouts.value += 1
                self._send_quietly(conn, encode_response(408, close=True))
            self._close(conn)

    @staticmethod
    def _send_quietly(conn: _Connection, data: bytes) -> None:
        try:
            if conn.reader is not None:
                conn.sock.send(data)
            else:
                with gevent.Timeout(0.1, False):  # type: ignore[arg-type]  # False: end quietly
                    conn.sock.sendall(data)
        except OSError:
            pass

    # -- one connection -------------------------------------------------------

    def _serve(self, conn: _Connection) -> None:
        try:
            if conn.reader is None:
                self._serve_tls(conn)
            else:
                self._serve_plain(conn)
        except (OSError, ssl.SSLError, gevent.Timeout, _Expired):
            pass
        finally:
            self._close(conn)

    def _serve_plain(self, conn: _Connection) -> None:
        parser = conn.parser
        sock = conn.sock
        reader = conn.reader
        assert reader is not None   # a plain connection has its read watcher
        wait = self._hub.wait
        view = self._view
        connections = self._connections
        served = 0
        ready = True      # just accepted: the request is probably in already
        while True:
            try:
                event = parser.next_event()
            except HttpError as err:
                self._reject(conn, err)
                return
            if event is NEED_DATA:
                if parser.in_progress:
                    if conn.first_byte is None:
                        conn.first_byte = time.monotonic()
                if not ready:
                    wait(reader)
                try:
                    n = sock.recv_into(view)
                except BlockingIOError:
                    ready = False
                    continue
                if not n:
                    return
                parser.feed(view[:n])
                ready = n == RECV_SIZE   # more may be waiting
                continue
            if event is CONTINUE:
                sock.send(CONTINUE_RESPONSE)
                continue
            conn.busy = True
            self._requests.value += 1
            reply, keep_open = self.respond(event)
            sent = sock.send(reply)
            if sent < len(reply):
                self._finish_send(conn, memoryview(reply)[sent:])
            if not keep_open:
                return
            conn.busy = False
            conn.first_byte = None
            conn.last_reply = time.monotonic()
            connections.move_to_end(conn)
            ready = False
            # A client that pipelines would always find its next request
            # ready and never let go of the hub: give the others their turn
            # now and then (not each time: that is a switch per request).
            served += 1
            if served % FAIRNESS_BATCH == 0:
                gevent.sleep(0)

    def _finish_send(self, conn: _Connection, rest: memoryview) -> None:
        """The rest of a reply larger than the socket buffer, within `timeout`."""
        writer = self._hub.loop.io(conn.sock.fileno(), WRITE)
        try:
            with gevent.Timeout(self.timeout):
                while rest:
                    self._hub.wait(writer)
                    try:
                        rest = rest[conn.sock.send(rest):]
                    except BlockingIOError:
                        pass
        finally:
            writer.close()

    def _reject(self, conn: _Connection, err: HttpError) -> None:
        self._rejected.value += 1
        log.debug("HTTP %s from client: %s", err.status, err.detail)
        reply = encode_response(err.status, close=True)
        if conn.reader is not None:
            sent = conn.sock.send(reply)
            if sent < len(reply):
                self._finish_send(conn, memoryview(reply)[sent:])
        else:
            conn.sock.sendall(reply)

    def _serve_tls(self, conn: _Connection) -> None:
        sock = conn.sock
        sock.settimeout(self.timeout)
        assert self._tls is not None   # TLS connections exist only with a context
        sock = conn.sock = self._tls.wrap_socket(sock, server_side=True)
        parser = conn.parser
        served = 0
        while True:
            try:
                event = parser.next_event()
            except HttpError as err:
                self._reject(conn, err)
                return
            if event is NEED_DATA:
                if parser.in_progress and conn.first_byte is None:
                    conn.first_byte = time.monotonic()
                data = sock.recv(RECV_SIZE)
                if not data:
                    return
                parser.feed(data)
                continue
            if event is CONTINUE:
                sock.sendall(CONTINUE_RESPONSE)
                continue
            conn.busy = True
            self._requests.value += 1
            reply, keep_open = self.respond(event)
            sock.sendall(reply)
            if not keep_open:
                return
            conn.busy = False
            conn.first_byte = None
            conn.last_reply = time.monotonic()
            self._connections.move_to_end(conn)
            served += 1
            if served % FAIRNESS_BATCH == 0:
                gevent.sleep(0)

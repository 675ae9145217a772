"""One ESL connection to one FreeSWITCH (gevent): connect, log in, run
commands, hand every other frame to its owner, notice when the peer is gone.

* `open()` connects within `connect_timeout`, waits (same bound) for
  `auth/request`, sends `auth PASS` or `userauth USER:PASS` and waits (same
  bound) for `+OK accepted` (docs/protocols/esl.md §10.1). Failures raise `EslConnectError`
  (`EslAuthError` for a refused login) and leave nothing behind.
* Commands are matched with replies in FIFO order (docs/protocols/esl.md §4): every
  `command/reply` or `api/response` completes the oldest outstanding command.
  A caller that times out leaves its slot in the FIFO, so its late reply is
  consumed and discarded, never handed to the next caller.
* One reader greenlet per connection cuts frames with the sans-IO parser and
  calls `on_frame(frame)` for every frame that is not a reply; it never waits
  on anything but the socket.
* A reply whose body is over `max_body` was never held (the parser reads it
  through): its command fails with `EslReplyTooLarge`, the connection stays.
  Every other frame over the cap reaches `on_frame` with `body=None`.
* Text a peer sends that reaches a message (a refused login's Reply-Text, a
  disconnect notice) is escaped and cut (`protocol.printable`).
* A disconnect notice, EOF, reset, protocol error or silence beyond the
  liveness bound ends the connection: every outstanding command fails at once
  with `EslNotConnected` naming the cause, and `on_lost(conn, reason)` runs.
* Liveness [EMU]: TCP keepalive and `TCP_USER_TIMEOUT` are set so that a peer
  that vanished without a FIN is noticed by the kernel within
  `liveness_timeout`; on top of that, after `idle_probe` seconds without a
  byte the connection sends a harmless unknown command (answered
  `-ERR command not found`) and a peer still silent after `liveness_timeout`
  is declared dead (`check_liveness()`, called periodically by the owner, so
  that no timer is armed per read). While a caller's command is unanswered
  FreeSWITCH may be legitimately silent (a synchronous `api` blocks the
  connection), so the bound is then `busy_timeout`; a peer that really
  vanished is still caught by the kernel within `liveness_timeout`.
"""

from __future__ import annotations

import collections
import logging
import socket as _stdsocket
import time
from collections.abc import Callable

import gevent
import gevent.event
import gevent.lock
from gevent import socket

from ..reasons import short_reason
from .protocol import (
    CT_AUTH_REQUEST,
    CT_COMMAND_REPLY,
    CT_EVENT_JSON,
    DEFAULT_MAX_BODY,
    REPLY_TYPES,
    Frame,
    FrameParser,
    ProtocolError,
    auth_command,
    encode_command,
    header_value,
    printable,
)

__all__ = [
    "EslAuthError",
    "EslConnectError",
    "EslConnection",
    "EslError",
    "EslLoginRefused",
    "EslNotConnected",
    "EslReply",
    "EslReplyTooLarge",
    "EslTimeout",
    "PROBE_COMMAND",
]

log = logging.getLogger("opensips_fs.esl")

RECV_SIZE = 256 * 1024
# An unknown command: FreeSWITCH answers `-ERR command not found` and does
# nothing else (no API event, no state change).
PROBE_COMMAND = "opensips-fs-ping"


class EslError(Exception):
    """Base of every ESL failure."""


class EslNotConnected(EslError):
    """The socket is not connected, or the connection was lost while waiting."""


class EslLoginRefused(EslNotConnected):
    """The socket is not connected because FreeSWITCH refuses its login."""


class EslTimeout(EslError):
    """No reply within the command timeout."""


class EslReplyTooLarge(EslError):
    """The reply was over the frame size limit; it was read and discarded."""


class EslConnectError(EslError):
    """A connection attempt failed (refused, timed out, no greeting)."""


class EslAuthError(EslConnectError):
    """FreeSWITCH refused the credentials."""


class EslReply:
    """The reply to one command: `command/reply` or `api/response`."""

    __slots__ = ("content_type", "headers", "body", "reply_text")

    def __init__(self, content_type: str | None, headers: list[tuple[str, str]], body: bytes | None):
        self.content_type = content_type
        self.headers = headers
        self.body = body
        self.reply_text = header_value(headers, "Reply-Text")

    @classmethod
    def from_frame(cls, frame: Frame) -> "EslReply":
        return cls(frame.content_type, frame.headers, frame.body)

    def header(self, name: str, default: str | None = None) -> str | None:
        return header_value(self.headers, name, default)

    def __repr__(self) -> str:
        if self.reply_text is not None:
            return f"EslReply({self.content_type!r}, {self.reply_text!r})"
        return f"EslReply({self.content_type!r}, body={None if self.body is None else len(self.body)})"


class _Waiter:
    """One outstanding command's FIFO slot."""

    __slots__ = ("done", "reply", "error", "abandoned", "user")

    def __init__(self, user: bool):
        self.done = gevent.event.Event()
        self.reply: EslReply | None = None
        self.error: Exception | None = None
        self.abandoned = False
        self.user = user


class _Lost(Exception):
    pass


def _set_keepalive(sock: socket.socket, liveness: float) -> None:
    """Kernel-level dead-peer detection within about `liveness` seconds."""
    sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_KEEPALIVE, 1)
    idle = max(1, int(liveness / 3))
    interval = max(1, int((liveness - idle) / 4))
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", 4),
                        ("TCP_USER_TIMEOUT", int(liveness * 1000))):
        option = getattr(_stdsocket, name, None)
        if option is not None:
            try:
                sock.setsockopt(_stdsocket.IPPROTO_TCP, option, value)
            except OSError:  # not supported on this platform
                pass
    sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)


class EslConnection:
    """A single logged-in ESL connection. Not reused after it is lost."""

    def __init__(self, host: str, port: int, *, connect_timeout: float, on_frame: Callable[[Frame], None],
                 on_lost: Callable[[EslConnection, str], None] | None = None,
                 max_body: int = DEFAULT_MAX_BODY, liveness_timeout: float = 30.0,
                 idle_probe: float = 10.0, busy_timeout: float = 300.0, label: str | None = None):
        self.host = host
        self.port = port
        self.label = label or f"{host}:{port}"
        self.connect_timeout = connect_timeout
        self.on_frame = on_frame
        self.on_lost = on_lost
        self.liveness_timeout = liveness_timeout
        self.idle_probe = min(idle_probe, liveness_timeout)
        self.busy_timeout = max(busy_timeout, liveness_timeout)
        self._parser = FrameParser(max_body=max_body)
        self._sock: socket.socket | None = None
        self._reader: gevent.Greenlet | None = None
        self._fifo: collections.deque[_Waiter] = collections.deque()
        self._send_lock = gevent.lock.Semaphore()
        self._early: list[Frame] = []
        self._last_rx = 0.0
        self._probe_sent = False
        self.connected = False
        self.lost_reason: str | None = None
        self.closed = gevent.event.Event()
        self.late_replies = 0

    # -- opening -------------------------------------------------------------

    def open(self, username: str | None, password: str, on_authenticating: Callable[[], None] | None = None) -> None:
        """Connect and log in, or raise `EslConnectError` / `EslAuthError`.
        `on_authenticating()` runs once the TCP connection is up."""
        timeout = self.connect_timeout
        try:
            sock = _open_socket(self.host, self.port, timeout)
        except (OSError, gevent.Timeout) as exc:
            raise EslConnectError(f"connect to {self.label} failed: {short_reason(exc)}") from None
        try:
            _set_keepalive(sock, self.liveness_timeout)
            if on_authenticating is not None:
                on_authenticating()
            greeting = self._read_frame(sock, timeout, "the auth/request greeting")
            if greeting.content_type != CT_AUTH_REQUEST:
                raise EslConnectError(f"{self.label} did not greet with auth/request "
                                      f"(got '{printable(greeting.content_type)}')")
            sock.sendall(encode_command(auth_command(password, username)))
            reply = self._read_frame(sock, timeout, "the reply to the login")
            text = reply.reply_text
            if reply.content_type != CT_COMMAND_REPLY or (text or "").lower() != "+ok accepted":
                raise EslAuthError(f"{self.label} refused the login: "
                                   f"{printable(text or reply.content_type or 'no Reply-Text')}")
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._last_rx = time.monotonic()
        self.connected = True
        self._reader = gevent.spawn(self._read_loop)

    def _read_frame(self, sock: socket.socket, timeout: float, what: str) -> Frame:
        deadline = time.monotonic() + timeout
        while not self._early:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EslConnectError(f"{self.label} sent nothing within {timeout:g} s while we waited for {what}")
            sock.settimeout(left)
            try:
                data = sock.recv(RECV_SIZE)
            except (TimeoutError, _stdsocket.timeout):
                continue
            except OSError as exc:
                raise EslConnectError(f"{self.label} failed while waiting for {what}: {short_reason(exc)}") from None
            if not data:
                raise EslConnectError(f"{self.label} closed the connection while waiting for {what}")
            try:
                self._early.extend(self._parser.feed(data))
            except ProtocolError as exc:
                raise EslConnectError(f"{self.label}: protocol error: {exc}") from None
        return self._early.pop(0)

    # -- commands ------------------------------------------------------------

    def send(self, text: str, user: bool = True, timeout: float | None = None) -> _Waiter:
        """Queue one command (text without its blank line) and send it. A peer
        that does not read for `timeout` s loses the connection (a command
        cut in half cannot be taken back) and the caller gets EslTimeout."""
        data = encode_command(text)
        if not self._send_lock.acquire(timeout=timeout):
            raise EslTimeout(f"could not send to {self.label} within {timeout:g} s")
        try:
            sock = self._sock
            if not self.connected or sock is None:
                raise EslNotConnected(f"{self.label} is not connected"
                                      + (f" ({self.lost_reason})" if self.lost_reason else ""))
            waiter = _Waiter(user)
            self._fifo.append(waiter)
            timer = gevent.Timeout(timeout) if timeout else None
            if timer is not None:
                timer.start()
            try:
                sock.sendall(data)
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                self._lose(f"FreeSWITCH did not take a command within {timeout:g} s")
                raise EslTimeout(f"could not send to {self.label} within {timeout:g} s") from None
            except OSError as exc:
                self._lose(f"send failed: {short_reason(exc)}")
            finally:
                if timer is not None:
                    timer.close()
        finally:
            self._send_lock.release()
        return waiter

    def wait(self, waiter: _Waiter, timeout: float) -> EslReply:
        """The reply of `waiter`, or EslTimeout (its slot stays: the late
        reply is discarded) / EslNotConnected."""
        if not waiter.done.wait(timeout):
            waiter.abandoned = True
            raise EslTimeout(f"no reply from {self.label} within {timeout:g} s")
        if waiter.error is not None:
            raise waiter.error
        assert waiter.reply is not None  # done without an error: the reply is there
        return waiter.reply

    def command(self, text: str, timeout: float) -> EslReply:
        """Send and wait, both within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        waiter = self.send(text, timeout=timeout)
        return self.wait(waiter, max(0.0, deadline - time.monotonic()))

    @property
    def outstanding(self) -> int:
        return len(self._fifo)

    # -- reading -------------------------------------------------------------

    def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None  # open() set it before starting this reader
        recv = sock.recv
        feed = self._parser.feed
        on_frame = self.on_frame
        dispatch = self._dispatch
        monotonic = time.monotonic
        sock.settimeout(None)  # silence is watched by check_liveness(), not by a timer per read
        try:
            early, self._early = self._early, []
            for frame in early:
                dispatch(frame)
            while True:
                data = recv(RECV_SIZE)
                if not data:
                    raise _Lost("EOF from FreeSWITCH"
                                + (" inside a frame" if self._parser.in_frame else ""))
                self._last_rx = monotonic()
                self._probe_sent = False
                for frame in feed(data):
                    if frame.content_type == CT_EVENT_JSON and frame.body is not None:
                        on_frame(frame)  # the bulk of the traffic, straight to the owner
                    else:
                        dispatch(frame)
        except _Lost as exc:
            self._lose(str(exc))
        except ProtocolError as exc:
            self._lose(f"protocol error: {printable(str(exc))}")
        except OSError as exc:
            self._lose(f"read failed: {short_reason(exc)}")
        except gevent.GreenletExit:
            self._lose("closed")
        except Exception as exc:  # a bug in a frame handler: never lose track of the connection
            log.exception("ESL %s: reader failed", self.label)
            self._lose(f"internal error: {exc!r}")

    def _dispatch(self, frame: Frame) -> None:
        """Every frame goes through here (events may skip it): replies complete
        the oldest outstanding command, a disconnect notice ends the
        connection, anything else goes to the owner."""
        content_type = frame.content_type
        if content_type in REPLY_TYPES:
            if self._fifo:
                self._complete(self._fifo.popleft(), frame)
            else:
                self.on_frame(frame)
        elif frame.is_disconnect:
            text = printable((frame.body or b"").strip() or content_type)
            raise _Lost(f"disconnect notice: {text}")
        else:
            self.on_frame(frame)

    def _complete(self, waiter: _Waiter, frame: Frame) -> None:
        if waiter.abandoned:
            if waiter.user:
                self.late_replies += 1
            return
        if frame.oversize:
            waiter.error = EslReplyTooLarge(
                f"the reply from {self.label} was {frame.oversize} bytes, over the "
                f"{self._parser.max_body}-byte limit (esl_max_frame_size); it was discarded")
        else:
            waiter.reply = EslReply.from_frame(frame)
        waiter.done.set()

    def check_liveness(self, now: float | None = None) -> None:
        """Called periodically (EslManager does it): probe a connection idle
        for `idle_probe` s, drop one silent beyond its bound."""
        if not self.connected:
            return
        silent = (now or time.monotonic()) - self._last_rx
        if silent < self.idle_probe:
            return
        # a caller's command still unanswered (even one whose caller gave up):
        # FreeSWITCH may be running a long synchronous api on this connection
        busy = any(w.user for w in self._fifo)
        limit = self.busy_timeout if busy else self.liveness_timeout
        if silent >= limit:
            self.close(f"no data from FreeSWITCH for {silent:.1f} s")
            return
        if not self._probe_sent and not busy:
            self._probe_sent = True
            gevent.spawn(self._probe)  # never block the caller on a full socket

    def _probe(self) -> None:
        try:
            waiter = self.send(PROBE_COMMAND, user=False, timeout=self.liveness_timeout)
        except EslError:
            return
        waiter.abandoned = True  # its reply only proves the peer is alive

    # -- closing -------------------------------------------------------------

    def _lose(self, reason: str) -> None:
        if not self.connected and self.closed.is_set():
            return
        self.connected = False
        self.lost_reason = reason
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(_stdsocket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        error = EslNotConnected(f"connection to {self.label} lost: {reason}")
        fifo, self._fifo = self._fifo, collections.deque()
        for waiter in fifo:
            waiter.error = error
            waiter.done.set()
        self.closed.set()
        if self.on_lost is not None:
            try:
                self.on_lost(self, reason)
            except Exception:
                log.exception("ESL %s: on_lost handler failed", self.label)

    def close(self, reason: str = "closed") -> None:
        """Close now (no `exit`, no `nixevent`); fail outstanding commands."""
        reader = self._reader
        self._lose(reason)
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)


def _open_socket(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to (host, port). An IP address is connected to
    directly: no resolver call, so thousands of sockets retrying at once do
    not queue thousands of lookups (and their memory) in the resolver's
    thread pool."""
    family = _stdsocket.AF_INET6 if ":" in host else _stdsocket.AF_INET
    try:
        _stdsocket.inet_pton(family, host)
    except OSError:
        return socket.create_connection((host, port), timeout=timeout)
    sock = socket.socket(family, _stdsocket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock

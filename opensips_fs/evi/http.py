"""`event_http` delivery [OURS]: `http://host[:port]/path` and `https://…` (docs/protocols/evi.md §4.5).

Per notification one `POST <path>` with `Content-Type: application/json`
and the exact JSON-RPC payload as the body, over one keep-alive connection
per destination, one request in flight, in order, `TCP_NODELAY`. Any 2xx is
delivered; another status, a timeout (5 s) or a connection error leaves the
payload queued and retries it (the first retry at once, for a stale
keep-alive connection, then backing off up to 1 s): at-least-once within the
queue bound. https verifies certificates unless `verify_cert` is off.

The response is ours to bound, not the subscriber's: the whole exchange
(request written, status, headers, body) must end within `TIMEOUT`, and at
most `MAX_RESPONSE_BODY` bytes of the body are read — the rest of a longer
(or endless) body is discarded by closing the connection.
Credentials in the URL are sent as HTTP Basic and never printed.

Built on the standard `http.client`, whose sockets are gevent's once the
entry point has patched the standard library.
"""

from __future__ import annotations

import base64
import http.client
import logging
import socket
import ssl
from typing import Any
from urllib.parse import unquote

import gevent

from .address import Target
from .delivery import Destination, EviCounters

__all__ = ["HttpDestination", "TIMEOUT", "MAX_RESPONSE_BODY"]

TIMEOUT = 5.0                   # connect, and the whole exchange of one notification
MAX_RESPONSE_BODY = 64 * 1024   # read of a response body; the rest closes the connection


class HttpStatusError(OSError):
    pass


class HttpDestination(Destination):
    transport = "http"
    log = logging.getLogger(__name__)
    _conn: http.client.HTTPConnection | None

    def __init__(self, key: tuple, label: str, queue_size: int, counters: EviCounters, target: Target,
                 verify_cert: bool = True, **limits: Any):
        super().__init__(key, label, queue_size, counters, **limits)
        self.target = target
        self.transport = target.transport
        self.verify_cert = verify_cert
        self.state = "ready"

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            t = self.target
            if t.transport == "https":
                context = ssl.create_default_context()
                if not self.verify_cert:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    t.host, t.port, timeout=TIMEOUT, context=context)
            else:
                conn = http.client.HTTPConnection(t.host, t.port, timeout=TIMEOUT)
            self.state = "connecting"
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
            self.state = "connected"
        return self._conn

    def _headers(self, length: int) -> dict:
        headers = {"Content-Type": "application/json", "Content-Length": str(length)}
        if self.target.userinfo:
            user, _, password = self.target.userinfo.partition(":")
            token = f"{unquote(user)}:{unquote(password)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        return headers

    def deliver(self) -> None:
        if not self.inflight:
            self.inflight = [self.queue.popleft()]
        payload = self.inflight[0]
        timer = gevent.Timeout(TIMEOUT, OSError(f"no complete response within {TIMEOUT:g} s"))
        timer.start()
        try:
            conn = self._connection()
            conn.request("POST", self.target.path, body=payload,
                         headers=self._headers(len(payload)))
            response = conn.getresponse()
            response.read(MAX_RESPONSE_BODY)
            complete = response.isclosed()
        except (OSError, http.client.HTTPException) as exc:
            self._retrying(1)
            if isinstance(exc, OSError):
                raise
            raise OSError(f"{exc.__class__.__name__}: {exc}") from exc
        finally:
            timer.close()
        if response.will_close or not complete:
            self.close()          # a body over the bound: the rest is not read
        if not 200 <= response.status < 300:
            self._retrying(1)
            raise HttpStatusError(f"HTTP {response.status} {response.reason}")
        self.inflight = []
        self._delivered(1)

"""MI over HTTP (`httpd` + `mi_http`): routing of the requests to MI and friends.

`httpserver.HttpConnections` accepts, frames and answers connections (limits,
time-outs, keep-alive); this module decides what each request gets:

* `POST /<root>` and `POST /<root>/…` run MI (`registry.handle`): 200 with
  the JSON-RPC reply (errors included), 202 + `Content-Length: 0` for a
  notification, 400 for an empty body, 405 (`Allow: POST`) for another
  method;
* `GET /health`, `GET /metrics` (`metrics.MetricsPage`) [OURS], plus
  any `extra_routes` (the app adds `/ready`); with HTTP auth on, `/health`
  stays open and `/metrics` / `/ready` need it unless `probes_auth` is 0;
* anything else: 404; a body over the limit: 413 and close; a malformed
  request: 400 and close; optional HTTP Basic auth (401) and TLS.

Keep-alive with TCP_NODELAY; an idle connection is closed after
`conn_timeout` seconds, a request must arrive whole within `conn_timeout` of
its first byte (slow senders get 408 and are cut off), a reply write that
stalls for `conn_timeout` (a client that stopped reading) ends the
connection, and at most `max_connections` are open (the oldest idle one
makes room for a new one).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from typing import TYPE_CHECKING, Callable

from gevent import ssl

from ..metrics import MetricsPage
from ..reasons import short_reason
from ..stats import Stats
from . import StartupError
from .httpserver import HttpConnections, listen
from .httpwire import HttpRequest, encode_response, json_ok_head

if TYPE_CHECKING:
    from ..config import HttpdSettings, MiHttpSettings
    from .registry import MiRegistry

__all__ = ["MiHttpServer"]

log = logging.getLogger(__name__)

JSON = "application/json"
MAX_BODY = 1 << 20
HEALTH_BODY = b'{"status":"ok"}'

# A route answers (status, content type, body) for a request.
Route = Callable[[HttpRequest], "tuple[int, str, bytes]"]


class MiHttpServer:
    """The `httpd` listener serving MI under `/<root>`."""

    def __init__(self, httpd_settings: HttpdSettings, mi_http_settings: MiHttpSettings | None,
                 registry: MiRegistry, stats: Stats,
                 extra_routes: dict[str, Route] | None = None, max_body: int = MAX_BODY,
                 metrics: MetricsPage | None = None):
        self.settings = httpd_settings
        self.registry = registry
        self.stats = stats
        self.metrics = metrics if metrics is not None else MetricsPage(
            stats, max_age=httpd_settings.metrics_max_age / 1000)
        root = (mi_http_settings.root if mi_http_settings is not None else "mi").strip("/")
        self.root_path = "/" + root
        self.timeout = float(httpd_settings.conn_timeout)
        self.routes: dict[str, Route] = {"/health": self._health, "/metrics": self._metrics}
        self.routes.update(extra_routes or {})
        # liveness is always open; the other probes too when probes_auth is off
        self._open_paths = {"/health"} | (set() if getattr(httpd_settings, "probes_auth", True)
                                          else {"/metrics", "/ready"})
        user = httpd_settings.auth_username
        password = httpd_settings.auth_password
        self._auth = None
        if user and password is not None:
            self._auth = f"{user}:{password}".encode()
        realm = httpd_settings.auth_realm or "OpenSIPS MI"
        self._challenge = (("WWW-Authenticate", f'Basic realm="{realm}"'),)
        self._tls = self._tls_context()
        self._root_prefix = self.root_path + "/"
        self.connections = HttpConnections(self._respond, stats, timeout=self.timeout, max_body=max_body,
                                           max_connections=httpd_settings.max_connections, tls=self._tls)
        self._rejected = stats.counter("mi", "http_rejected", "HTTP requests refused (bad request, auth, size, method)")
        self._listening = False

    def _tls_context(self) -> ssl.SSLContext | None:
        cert = self.settings.tls_cert_file
        key = self.settings.tls_key_file
        if not cert:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as err:
            raise StartupError(f"httpd: cannot load TLS certificate {cert}: {err}") from None
        return context

    # -- life cycle -----------------------------------------------------------

    @property
    def max_body(self) -> int:
        return self.connections.max_body

    @max_body.setter
    def max_body(self, value: int) -> None:
        self.connections.max_body = value

    @property
    def address(self) -> tuple[str, int]:
        if not self._listening:
            return (self.settings.ip, self.settings.port)
        return self.connections.address or (self.settings.ip, self.settings.port)

    def start(self) -> "MiHttpServer":
        where = f"{self.settings.ip}:{self.settings.port}"
        try:
            listener = listen(self.settings.ip, self.settings.port)
        except OSError as err:
            raise StartupError(f"httpd: cannot listen on {where}: {short_reason(err)}") from None
        self.connections.start(listener)
        self._listening = True
        log.info("MI HTTP listening on %s:%s%s", *self.address, self.root_path)
        return self

    def stop(self, timeout: float = 1.0) -> None:
        if self._listening:
            self.connections.stop()
            self._listening = False

    # -- routing --------------------------------------------------------------

    def _respond(self, request: HttpRequest) -> tuple[bytes, bool]:
        close = not request.keep_alive
        path = request.path
        if path == self.root_path or path.startswith(self._root_prefix):
            if self._auth is not None and not self._authorized(request):
                return self._unauthorized(close)
            return self._mi(request, close)
        route = self.routes.get(path)
        if route is None:
            self._rejected.value += 1
            return encode_response(404, close=close), not close
        if request.method not in ("GET", "HEAD"):
            self._rejected.value += 1
            return encode_response(405, close=close, headers=(("Allow", "GET"),)), not close
        if self._auth is not None and path not in self._open_paths and not self._authorized(request):
            return self._unauthorized(close)
        try:
            status, content_type, body = route(request)
        except Exception:
            log.exception("HTTP route %s failed", path)
            status, content_type, body = 500, "text/plain", b""
        if request.method == "HEAD":
            reply = encode_response(status, body, content_type=content_type, close=close)
            return reply[:len(reply) - len(body)], not close
        return encode_response(status, body, content_type=content_type, close=close), not close

    def _mi(self, request: HttpRequest, close: bool) -> tuple[bytes, bool]:
        if request.method != "POST":
            self._rejected.value += 1
            return encode_response(405, content_type=JSON, close=close, headers=(("Allow", "POST"),)), not close
        if not request.body:
            self._rejected.value += 1
            return encode_response(400, content_type=JSON, close=close), not close
        reply = self.registry.handle(request.body, "http")
        if reply is None:
            return encode_response(202, content_type=JSON, close=close), not close
        if close:
            return encode_response(200, reply, content_type=JSON, close=True), False
        return json_ok_head(len(reply)) + reply, True

    def _authorized(self, request: HttpRequest) -> bool:
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return self._auth is not None and hmac.compare_digest(given, self._auth)

    def _unauthorized(self, close: bool) -> tuple[bytes, bool]:
        self._rejected.value += 1
        return encode_response(401, close=close, headers=self._challenge), not close

    def _health(self, request: HttpRequest) -> tuple[int, str, bytes]:
        return 200, JSON, HEALTH_BODY

    def _metrics(self, request: HttpRequest) -> tuple[int, str, bytes]:
        content_type, body = self.metrics.render(request.header("accept"))
        return 200, content_type, body

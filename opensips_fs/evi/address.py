"""EVI subscriber socket strings: parsing, printing, matching (docs/protocols/evi.md §3).

Supports `udp:host:port`, `unix:/path`, `tcp:host:port[/method]` and its
3.0 alias `jsonrpc:`, `xmlrpc:host:port[/path]:method`, and `http://` /
`https://` URLs, and `rabbitmq:` (parsed in `rabbitmq_address`).
`parse_socket` is pure text work; `resolve` (the only part
touching the network: a DNS lookup at subscribe time, as OpenSIPS does) turns
the host into the address the destination sends to.

Goals: reject anything malformed with `None` (the caller answers 400 "Bad
parameter value"); linear in the length of the string. [EMU] A socket
string holding a space or a control character (CR, LF, NUL, DEL, C1…)
anywhere is malformed: such a path would be written into an HTTP request
line (an `xmlrpc:` path with CR LF could smuggle requests), or never be
deliverable. Non-ASCII text is allowed; an http(s) path is sent
percent-encoded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
import socket as _socket
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from ..logs import mask_password

__all__ = ["Address", "Target", "parse_socket", "resolve", "MODULE_OF"]

# where a destination sends: (host, port) or a unix socket path
Address = tuple[str, int] | str

# transport token (text before the first ':') -> OpenSIPS module providing it
MODULE_OF = {
    "udp": "event_datagram",
    "unix": "event_datagram",
    "tcp": "event_stream",
    "jsonrpc": "event_stream",
    "xmlrpc": "event_xmlrpc",
    "http": "event_http",
    "https": "event_http",
    "rabbitmq": "event_rabbitmq",
}


@dataclass(frozen=True)
class Target:
    """A parsed subscriber socket string."""

    transport: str        # udp, unix, tcp, jsonrpc, xmlrpc, http, https
    printed: str          # as shown by subscribers_list (secrets masked)
    match: tuple          # re-subscribing with an equal tuple refreshes
    host: str = ""        # as written (unix: the path)
    port: int = 0
    method: str | None = None   # tcp /method, xmlrpc method
    path: str = ""        # xmlrpc / http path (with query)
    userinfo: str = ""    # http user:password, never printed

    @property
    def module(self) -> str:
        return MODULE_OF[self.transport]


_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f]")
_URL_SAFE = "/?=&;:@!$'()*+,%~-._[]"


def _port(text: str) -> int | None:
    if not text.isdigit() or not text.isascii():
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def _host_port(rest: str) -> tuple[str, int] | None:
    host, sep, port_text = rest.partition(":")
    port = _port(port_text) if sep else None
    if not host or port is None:
        return None
    return host, port


def parse_socket(text: str) -> Target | None:
    """Parse a socket string; None when malformed or of an unknown transport."""
    if _FORBIDDEN.search(text):
        return None
    transport, sep, rest = text.partition(":")
    if not sep or transport not in MODULE_OF:
        return None
    return _PARSERS[transport](transport, rest, text)


def _parse_rabbitmq(transport: str, rest: str, text: str) -> Target | None:
    from .rabbitmq_address import parse_rabbitmq   # it builds on Target
    return parse_rabbitmq(rest)


def _parse_udp(transport: str, rest: str, text: str) -> Target | None:
    hp = _host_port(rest)
    if hp is None:
        return None
    host, port = hp
    return Target("udp", f"udp:{host}:{port}", ("udp", host, port), host, port)


def _parse_unix(transport: str, rest: str, text: str) -> Target | None:
    if not rest:
        return None
    return Target("unix", f"unix:{rest}", ("unix", rest), rest)


def _parse_stream(transport: str, rest: str, text: str) -> Target | None:
    address, _, method_text = rest.partition("/")
    hp = _host_port(address)
    if hp is None:
        return None
    host, port = hp
    method = method_text or None
    printed = f"{transport}:{host}:{port}" + (f"/{method}" if method else "")
    return Target(transport, printed, (transport, host, port, method), host, port, method)


def _parse_xmlrpc(transport: str, rest: str, text: str) -> Target | None:
    host, sep, rest = rest.partition(":")
    address, sep2, method = rest.rpartition(":")
    if not host or not sep or not sep2 or not method:
        return None
    port_text, slash, path = address.partition("/")
    port = _port(port_text)
    if port is None:
        return None
    path = "/" + path if slash else "/RPC2"
    return Target("xmlrpc", text, ("xmlrpc", text), host, port, method, path)


def _parse_url(transport: str, rest: str, text: str) -> Target | None:
    """http / https: a URL."""
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError:
        return None
    if url.scheme != transport or not url.hostname or url.fragment:
        return None
    port = port or (443 if transport == "https" else 80)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    if not path.isascii():
        path = quote(path, safe=_URL_SAFE)
    userinfo = ""
    printed = text
    if "@" in url.netloc:
        userinfo = url.netloc.rpartition("@")[0]
        printed = text.replace(url.netloc, mask_password(url.netloc), 1)
    return Target(transport, printed, (transport, text), url.hostname, port,
                  None, path, userinfo)


_PARSERS: dict[str, Callable[[str, str, str], Target | None]] = {
    "rabbitmq": _parse_rabbitmq, "udp": _parse_udp, "unix": _parse_unix,
    "tcp": _parse_stream, "jsonrpc": _parse_stream, "xmlrpc": _parse_xmlrpc,
    "http": _parse_url, "https": _parse_url,
}


def resolve(target: Target) -> Address:
    """The address to send to: an IPv4 (host, port) or a unix path.

    Raises OSError when the host does not resolve (-> 400 at subscribe time).
    http(s) and rabbitmq keep the host name (TLS needs it; the connection
    resolves it).
    """
    if target.transport == "unix":
        return target.host
    if target.transport in ("http", "https", "rabbitmq"):
        _socket.getaddrinfo(target.host, target.port, type=_socket.SOCK_STREAM)
        return (target.host, target.port)
    return (_socket.gethostbyname(target.host), target.port)

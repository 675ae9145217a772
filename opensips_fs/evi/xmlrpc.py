"""`event_xmlrpc` delivery: `xmlrpc:host:port[/path]:method` (docs/protocols/evi.md §3).

OpenSIPS's event_xmlrpc request, reproduced: a one-way HTTP/1.1 `POST`
(`Connection: close`, `User-Agent: OpenSIPS XMLRPC Notifier`,
`Content-type: text/xml`) of a `methodCall` whose method is the subscriber's
method, whose first param is the event name as a string and whose other
params follow, each `<param>` carrying `<name>` then `<value>` (`<int>` for
integer params, `<string>` otherwise), or — with modparam
`use_struct_param` — a one-member `<struct>`. One connection per request,
no response awaited. [EMU] `&`, `<`, `>` in values are escaped (OpenSIPS
copies them raw, producing malformed XML); a request that cannot be sent is
kept and retried like tcp. A path or method out of ASCII is written as its
UTF-8 bytes, as OpenSIPS copies the subscriber's bytes (addresses with
spaces or control characters are refused at `event_subscribe`).

`request_params` and `request` are pure byte builders.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from gevent import socket as gsocket
from xml.sax.saxutils import escape

from .delivery import Destination, EviCounters
from .payload import Params

__all__ = ["XmlRpcDestination", "request_params", "request"]

CONNECT_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0


def _text(value: object) -> str:
    return escape(value) if isinstance(value, str) else str(value)


def request_params(params: Params | None, struct: bool = False) -> str:
    """The `<param>` elements for an event's params (the event name excluded)."""
    out = []
    for name, value in params or ():
        out.append("<param>\n")
        if name:
            if struct:
                out.append("<value><struct><member>\n")
            out.append(f"<name>{_text(name)}</name>\n")
        if isinstance(value, int):
            out.append(f"<value><int>{value}</int></value>\n")
        else:
            out.append(f"<value><string>{_text(value)}</string></value>\n")
        if name and struct:
            out.append("</member></struct></value>\n")
        out.append("</param>\n")
    return "".join(out)


def request(host: str, port: int, path: str, method: str, event: str,
            params_xml: str) -> bytes:
    """The whole HTTP request OpenSIPS writes for one event to one subscriber."""
    body = ('<?xml version="1.0"?>\n<methodCall>\n'
            f"<methodName>{_text(method)}</methodName>\n<params>\n"
            f"<param>\n<value><string>{_text(event)}</string></value>\n</param>\n"
            f"{params_xml}</params>\n</methodCall>").encode("utf-8", "surrogateescape")
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            "User-Agent: OpenSIPS XMLRPC Notifier\r\nContent-type: text/xml\r\n"
            f"Content-length: {len(body)}\r\n\r\n").encode("utf-8", "surrogateescape")
    return head + body


class XmlRpcDestination(Destination):
    """An XML-RPC server; queue items are complete requests."""

    transport = "xmlrpc"
    log = logging.getLogger(__name__)

    def __init__(self, key: tuple, label: str, queue_size: int, counters: EviCounters,
                 address: tuple[str, int], **limits: Any):
        super().__init__(key, label, queue_size, counters, **limits)
        self.address = address
        self.state = "ready"

    def deliver(self) -> None:
        if not self.inflight:
            self.inflight = [self.queue.popleft()]
        self.state = "connecting"
        sock = gsocket.create_connection(self.address, timeout=CONNECT_TIMEOUT)
        try:
            sock.settimeout(WRITE_TIMEOUT)
            try:
                sock.sendall(self.inflight[0])
            except OSError:
                self._retrying(1)
                raise
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        finally:
            sock.close()
        self.state = "ready"
        self.inflight = []
        self._delivered(1)

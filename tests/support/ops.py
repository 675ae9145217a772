"""An opensips-fs running in the test process, as an operator sees it: MI
over HTTP, FIFO and UDP, the HTTP probe routes, and the log lines it writes
(through `logs.setup`, so formats, masking and rate limits apply)."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

from opensips_fs import config, logs
from opensips_fs.app import App

from . import waits

BASE_CFG = '''
log_level=4
loadmodule "freeswitch.so"
loadmodule "freeswitch_scripting.so"
loadmodule "httpd.so"
modparam("httpd", "ip", "127.0.0.1")
modparam("httpd", "port", 0)
loadmodule "mi_http.so"
loadmodule "mi_datagram.so"
modparam("mi_datagram", "socket_name", "udp:127.0.0.1:0")
loadmodule "event_datagram.so"
'''


T = TypeVar("T")


def wait_until(predicate: Callable[[], T | Literal[False] | None], timeout: float = 10.0) -> T:
    """`waits.wait_until` with the longer bound these whole-service tests need."""
    return waits.wait_until(predicate, timeout=timeout, step=0.01)


class LogCapture(io.StringIO):
    """What `logs.setup(level)` writes to stderr, kept here; `close()` puts
    the opensips_fs logger back as it was."""

    def __init__(self, level: int = 4):
        super().__init__()
        self._logger = logging.getLogger("opensips_fs")
        self._saved = (list(self._logger.handlers), self._logger.propagate, self._logger.level,
                       logs.get_level())
        logs.setup(level, True)
        for handler in self._logger.handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "_opensips_fs", False):
                handler.setStream(self)

    def lines(self) -> list[str]:
        return [line for line in self.getvalue().splitlines() if line]

    def close(self) -> None:
        for handler in list(self._logger.handlers):
            if handler not in self._saved[0]:
                self._logger.removeHandler(handler)
        for handler in self._saved[0]:
            if handler not in self._logger.handlers:
                self._logger.addHandler(handler)
        self._logger.propagate = self._saved[1]
        self._logger.setLevel(self._saved[2])
        logs.set_level(self._saved[3])


class OpsStack:
    """App(config) started on ephemeral ports; `extra` is appended to the config."""

    def __init__(self, tmp_path: Path, extra: str = "", fifo: bool = True):
        self.tmp_path = tmp_path
        self.log = LogCapture()
        text = BASE_CFG
        if fifo:
            text += (f'loadmodule "mi_fifo.so"\nmodparam("mi_fifo", "fifo_name", "{tmp_path}/fifo")\n'
                     f'modparam("mi_fifo", "reply_dir", "{tmp_path}/")\n')
        self.app = App(config.loads(text + extra, str(tmp_path / "opensips-fs.cfg"))).start()
        self.http = self._bound("MI HTTP")
        self.udp = self._bound("MI datagram")

    def _bound(self, what: str) -> Any:
        for name, _, server in self.app.transports:
            if name == what:
                return server.address
        return None

    def stop(self) -> None:
        self.app.stop()
        self.log.close()

    # -- MI
    def mi(self, method: str, params: object = None, transport: str = "http", auth: str | None = None) -> Any:
        body: dict[str, object] = {"jsonrpc": "2.0", "method": method, "id": 1}
        if params is not None:
            body["params"] = params
        data = json.dumps(body).encode()
        if transport == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(5)
                sock.sendto(data, tuple(self.udp[:2]))
                return json.loads(sock.recv(65536))
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.http[1]}/mi", data=data,
                                         headers=headers)
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def post_raw(self, body: bytes, path: str = "/mi") -> tuple[int, dict, bytes]:
        """POST `body` as is (no JSON encoding): (status, headers, body)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http[1]}{path}", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def get(self, path: str, auth: str | None = None) -> tuple[int, dict, bytes]:
        """GET `path` on the httpd listener: (status, headers, body)."""
        headers = {}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.http[1]}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

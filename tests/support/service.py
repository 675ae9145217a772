"""opensips-fs as a user runs it: the `opensips-fs` command in a subprocess
(`opensips_fs(*args)`, `Service`), a copy of the default config moved to a
tmp folder and ephemeral ports (`make_config`, `reserved_port`), and MI over
HTTP (`mi_http`). The `services` fixture (conftest.py) starts and reaps
`Service`s."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CFG = REPO / "etc" / "opensips-fs.cfg"


def opensips_fs(*args: object, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opensips_fs", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def reserved_port() -> socket.socket:
    """A socket holding an ephemeral TCP port without listening on it, for a
    service started in a subprocess that must be told its port: until the
    holder is closed no other socket on the machine is handed the port (a
    port bound then released may be taken by any test running meanwhile),
    connections to it are refused, and the service, whose listener sets
    SO_REUSEADDR, binds it alongside."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    return holder


def make_config(tmp_path: Path, http_port: int = 0, extra: str = "") -> Path:
    """The default config, copied, with every fixed address moved to tmp_path
    or to an ephemeral port (tests never touch the default ports and paths)."""
    text = DEFAULT_CFG.read_text()
    text = text.replace('"port", 8888', f'"port", {http_port}')
    text = text.replace('"/tmp/opensips_fifo"', f'"{tmp_path}/fifo"')
    text = text.replace('"reply_dir", "/tmp/"', f'"reply_dir", "{tmp_path}/"')
    text = text.replace("udp:127.0.0.1:8080", "udp:127.0.0.1:0")
    text = text.replace('"sqlite://../var/opensips-fs.sqlite"', '"sqlite://fs.sqlite"')
    assert "8888" not in text.replace("127.0.0.1:8888/mi", "") and "/tmp/opensips_fifo" not in text
    path = tmp_path / "opensips-fs.cfg"
    path.write_text(text + extra)
    return path


class Service:
    """opensips-fs running in a subprocess, stderr captured to a file."""

    def __init__(self, cfg: Path, *args: str):
        self.log_path = Path(str(cfg) + ".log")
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "opensips_fs", "-f", str(cfg), *args],
            stdout=subprocess.DEVNULL, stderr=self.log_file, cwd=REPO)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before {text!r}:\n{self.log}")
            time.sleep(0.02)
        raise AssertionError(f"no {text!r} within {timeout} s:\n{self.log}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log_file.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()


def mi_http(port: int, method: str, params: object = None, root: str = "mi") -> Any:
    """One MI call over HTTP: the decoded JSON-RPC reply."""
    body: dict[str, object] = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        body["params"] = params
    request = urllib.request.Request(f"http://127.0.0.1:{port}/{root}",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.loads(reply.read())

"""The real MI clients, each run as a child process the way users run it:
``opensips-cli`` (one-shot ``-x mi …`` and an interactive session fed
``mi WORDS`` lines) and the ``opensips`` package's ``OpenSIPSMI``.

They reach the servers under test through :class:`MiServers`: anything with
the MI HTTP server's ``address``, the FIFO server's ``path`` and the datagram
server's ``address``."""

from __future__ import annotations

import configparser
import fcntl
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import gevent

VENV_BIN = Path(sys.executable).parent
TRANSPORTS = ["http", "fifo", "datagram"]


@dataclass
class MiServers:
    """The MI servers a client is pointed at."""

    http: Any                   # has .address (host, port)
    fifo: Any                   # has .path
    datagram: Any               # has .address (host, port)
    reply_dir: Path             # where FIFO clients make their reply FIFOs
    home: Path                  # HOME and config folder of the client processes


# -------------------------------------------------- opensips-cli, one-shot

def cli_options(servers: MiServers, transport: str) -> dict[str, str]:
    host, port = servers.http.address
    return {
        "http": {"communication_type": "http", "url": f"http://{host}:{port}/mi"},
        "fifo": {"communication_type": "fifo", "fifo_file": servers.fifo.path,
                 "fifo_file_fallback": servers.fifo.path, "fifo_reply_dir": str(servers.reply_dir)},
        "datagram": {"communication_type": "datagram", "datagram_ip": "127.0.0.1",
                     "datagram_port": str(servers.datagram.address[1])},
    }[transport]


def opensips_cli(servers: MiServers, transport: str, *words: str) -> subprocess.CompletedProcess:
    """``opensips-cli -x mi WORDS`` over one transport."""
    config = servers.home / f"cli-{transport}.cfg"
    lines = ["[default]", "log_level: WARNING", "output_type: pretty-print"]
    lines += [f"{key}: {value}" for key, value in cli_options(servers, transport).items()]
    config.write_text("\n".join(lines) + "\n")
    env = dict(os.environ, HOME=str(servers.home))
    return subprocess.run([str(VENV_BIN / "opensips-cli"), "-f", str(config), "-x", "mi", *words],
                          capture_output=True, text=True, timeout=30, env=env)


# -------------------------------------------------- the opensips package

MI_SCRIPT = r"""
import json, sys
from opensips.mi import OpenSIPSMI, OpenSIPSMIException
kwargs = json.loads(sys.argv[1])
mi = OpenSIPSMI(kwargs.pop("conn"), **kwargs)
out = []
for method, params in json.loads(sys.argv[2]):
    try:
        out.append({"result": mi.execute(method, params)})
    except OpenSIPSMIException as e:
        out.append({"error": str(e)})
print(json.dumps(out))
"""


def opensips_mi(servers: MiServers, transport: str, calls: list) -> list:
    """Run `calls` ([method, params] pairs) through the `opensips` package's
    OpenSIPSMI in a child process; the list of replies."""
    host, port = servers.http.address
    kwargs = {
        "http": {"conn": "http", "url": f"http://{host}:{port}/mi"},
        "fifo": {"conn": "fifo", "fifo_file": servers.fifo.path, "fifo_reply_dir": str(servers.reply_dir)},
        "datagram": {"conn": "datagram", "datagram_ip": "127.0.0.1", "datagram_port": servers.datagram.address[1]},
    }[transport]
    result = subprocess.run([sys.executable, "-c", MI_SCRIPT, json.dumps(kwargs), json.dumps(calls)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -------------------------------------------------- opensips-cli, interactive

CLI = VENV_BIN / "opensips-cli"
ARRAY_PARAM = {"fs_subscribe", "fs_unsubscribe", "freeswitch_scripting:subscribe",
               "freeswitch_scripting:unsubscribe"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CLI_ERROR = re.compile(r"Error executing command: (-?[0-9]+): (.*?)(?: \((.*)\))?$")


def cli_words(body: object) -> list[str] | None:
    """The opensips-cli words that send this request, or None when the CLI
    cannot express it (it only sends strings, groups the words after the URL
    of fs_subscribe/fs_unsubscribe into one array, and makes `events=…` an
    array; notifications and non-string values are out of its reach)."""
    if not isinstance(body, dict) or "id" not in body or not isinstance(body.get("method"), str):
        return None
    method, params = body["method"], body.get("params")
    if params in (None, {}):
        return [method]
    if isinstance(params, dict):
        words = [method]
        for key, value in params.items():
            if key == "events" and method in ARRAY_PARAM:
                if not (isinstance(value, list) and value and all(
                        isinstance(v, str) and v and not re.search(r"\s", v) for v in value)):
                    return None
                words.append(f"{key}={' '.join(value)}")
            elif isinstance(value, str) and value and not re.search(r"\s", value):
                words.append(f"{key}={value}")
            else:
                return None
        return words
    if not isinstance(params, list) or not params:
        return None
    if method in ARRAY_PARAM:
        if len(params) == 2 and isinstance(params[0], str) and params[0] \
                and isinstance(params[1], list) and params[1] \
                and all(isinstance(v, str) and v for v in params[1]):
            return [method, params[0], *params[1]]
        return None
    if all(isinstance(v, str) for v in params):
        return [method, *params]
    return None


def cli_config(http_port: int, directory: Path) -> Path:
    cfg = configparser.ConfigParser()
    cfg["default"] = {"communication_type": "http", "url": f"http://127.0.0.1:{http_port}/mi",
                      "log_level": "WARNING", "prompt_name": "opensips-cli",
                      "prompt_intro": "", "prompt_emptyline_repeat_cmd": "False",
                      "history_file": str(directory / "cli_history"),
                      "history_file_size": "100", "output_type": "pretty-print"}
    path = directory / "opensips-cli.cfg"
    with open(path, "w") as f:
        cfg.write(f)
    return path


def parse_cli_output(returncode_ok: bool, out: str, err: str) -> dict:
    """What the CLI showed, as a JSON-RPC reply: result printed on stdout, or
    `Error executing command: CODE: MESSAGE (DATA)` on stderr."""
    for line in ANSI.sub("", err).splitlines():
        match = CLI_ERROR.search(line)
        if match:
            error = {"code": int(match[1]), "message": match[2]}
            if match[3] is not None:
                error["data"] = match[3]
            return {"jsonrpc": "2.0", "error": error, "id": 1}
    assert returncode_ok and out.strip(), (out, err)
    return {"jsonrpc": "2.0", "result": json.loads(out), "id": 1}


class CliSession:
    """One interactive opensips-cli process (its start-up takes most of a
    second), fed `mi WORDS` lines; each output ends at the next prompt.
    Words holding a newline cannot be typed on one line: those commands run
    as one-shot `opensips-cli -x mi …` processes."""

    PROMPT = b"(opensips-cli): "

    def __init__(self, http_port: int, directory: Path):
        self.config = cli_config(http_port, directory)
        self.calls = 0
        self.proc = subprocess.Popen([sys.executable, "-u", str(CLI), "-f", str(self.config)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        assert self.proc.stdin is not None and self.proc.stdout is not None and self.proc.stderr is not None
        self.stdin, self.stdout, self.stderr = self.proc.stdin, self.proc.stdout, self.proc.stderr
        for pipe in (self.stdout, self.stderr):
            fd = pipe.fileno()
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self._read_until_prompt()

    def _read(self, pipe: IO[bytes]) -> bytes:
        try:
            return os.read(pipe.fileno(), 65536) or b""
        except BlockingIOError:
            return b""

    def _read_until_prompt(self) -> bytes:
        data = b""
        with gevent.Timeout(20, AssertionError(f"opensips-cli gave no prompt: {data!r}")):
            while not data.endswith(self.PROMPT):
                chunk = self._read(self.stdout)
                if chunk:
                    data += chunk
                else:
                    assert self.proc.poll() is None, "opensips-cli exited"
                    gevent.sleep(0.005)
        return data[:-len(self.PROMPT)]

    def call(self, words: list[str]) -> dict:
        self.calls += 1
        if any("\n" in w or "\r" in w for w in words):
            run = subprocess.run([str(CLI), "-f", str(self.config), "-x", "mi", *words],
                                 capture_output=True, text=True, timeout=30)
            return parse_cli_output(run.returncode == 0, run.stdout, run.stderr)
        self._read(self.stderr)  # nothing left over
        self.stdin.write(("mi " + " ".join(shlex.quote(w) for w in words) + "\n").encode())
        self.stdin.flush()
        out = self._read_until_prompt().decode("utf-8", "replace")
        err = b""
        while chunk := self._read(self.stderr):
            err += chunk
        return parse_cli_output(True, out, err.decode("utf-8", "replace"))

    def close(self) -> None:
        try:
            self.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

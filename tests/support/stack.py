"""opensips-fs as the OpenSIPS recordings saw OpenSIPS: the service (``App``
from a config, MI over HTTP or through the real opensips-cli) with one
FreeSWITCH simulator per recorded ESL peer and a refused port for each peer
that was down. Recorded host:port strings are rewritten to the ephemeral
ports on the way in and back on the way out, so recorded requests and
replies compare as they are."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import gevent

from opensips_fs import config
from opensips_fs.app import App
from opensips_fs.esl.connection import PROBE_COMMAND
from opensips_fs.sim import FsSimulator, SimSettings, SimUser
from support.mi_clients import CliSession, cli_words

SIM_PORTS = (8021, 8022, 8023)
DEAD_PORTS = (8028, 8029, 8030, 8031)  # nothing listened there when recording
HOST_PORT = re.compile(r"127\.0\.0\.1:(80[0-9][0-9])")


class Stack:
    """Simulators on ephemeral ports, refused ports, and opensips-fs itself."""

    def __init__(self, tmp_path: Path, sims: Iterable[int] = SIM_PORTS, users: Iterable[SimUser] = (),
                 modparams: str = "", db_rows: list | None = None, esl_cmd_timeout: int = 5000,
                 db_params: str | None = None, extra: str = "", before_start: Callable[[Stack], object] | None = None,
                 transport: str = "http", httpd_params: str = ""):
        self.tmp_path = tmp_path
        self.sims: dict[int, FsSimulator] = {}
        for golden_port in sims:
            self.sims[golden_port] = FsSimulator(SimSettings(password="ClueCon", users=list(users))).start()
        self.port_map = {p: box.port for p, box in self.sims.items()}
        self._holders: list[socket.socket] = []
        for golden_port in DEAD_PORTS:  # bound, never listening: connections are refused
            holder = socket.socket()
            holder.bind(("127.0.0.1", 0))
            self._holders.append(holder)
            self.port_map[golden_port] = holder.getsockname()[1]
        self.db_path = tmp_path / "fs.sqlite"
        if db_rows is not None:
            self.write_db(db_rows)
        if before_start is not None:
            before_start(self)
        text = f'''
loadmodule "freeswitch.so"
modparam("freeswitch", "esl_cmd_timeout", {esl_cmd_timeout})
loadmodule "freeswitch_scripting.so"
{db_params if db_params is not None else
 f'modparam("freeswitch_scripting", "db_url", "sqlite://{self.db_path}")'}
{self.rewrite(modparams)}
{extra}
loadmodule "httpd.so"
modparam("httpd", "ip", "127.0.0.1")
modparam("httpd", "port", 0)
{httpd_params}
loadmodule "mi_http.so"
modparam("mi_http", "root", "mi")
'''
        self.app = App(config.loads(text, str(tmp_path / "opensips-fs.cfg"))).start()
        self.http_port = next(server for what, _, server in self.app.transports
                              if what == "MI HTTP").address[1]
        self.transport = transport
        self.cli = CliSession(self.http_port, tmp_path) if transport == "cli" else None

    # -- ports
    def rewrite(self, text: str) -> str:
        return HOST_PORT.sub(lambda m: f"127.0.0.1:{self.port_map.get(int(m[1]), int(m[1]))}",
                             text)

    def unrewrite(self, text: str) -> str:
        back = {str(v): k for k, v in self.port_map.items()}
        return re.sub(r"127\.0\.0\.1:([0-9]+)",
                      lambda m: f"127.0.0.1:{back.get(m[1], m[1])}", text)

    # -- DB
    def write_db(self, rows: list[dict], version: int | None = 1, table_present: bool = True) -> None:
        conn = sqlite3.connect(self.db_path)
        with conn:
            conn.execute("CREATE TABLE IF NOT EXISTS version (table_name CHAR(32) NOT NULL, "
                         "table_version INTEGER DEFAULT 0 NOT NULL, "
                         "CONSTRAINT version_t_name_idx UNIQUE (table_name))")
            conn.execute("DROP TABLE IF EXISTS freeswitch")
            conn.execute("DELETE FROM version")
            if version is not None:
                conn.execute("INSERT INTO version VALUES ('freeswitch', ?)", (version,))
            if table_present:
                conn.execute("CREATE TABLE freeswitch (id INTEGER PRIMARY KEY AUTOINCREMENT "
                             "NOT NULL, username CHAR(64), password CHAR(64) NOT NULL, "
                             "ip CHAR(20) NOT NULL, port INTEGER DEFAULT 8021 NOT NULL, "
                             "events_csv CHAR(255))")
                for row in rows:
                    r = dict(row)
                    r["port"] = self.port_map.get(r["port"], r["port"])
                    conn.execute("INSERT INTO freeswitch VALUES (:id, :username, :password, :ip, "
                                 ":port, :events_csv)", r)
        conn.close()

    # -- MI over HTTP, from the recorded request bytes
    def send_raw(self, request_raw: str) -> tuple[int, str]:
        head, _, body = request_raw.encode("latin-1").partition(b"\r\n\r\n")
        body = self.rewrite(body.decode("latin-1")).encode("latin-1")
        head = re.sub(rb"Content-Length: [0-9]+", b"Content-Length: %d" % len(body), head)
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=30) as s:
            s.sendall(head + b"\r\n\r\n" + body)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        status_line, _, rest = data.partition(b"\r\n")
        _, _, reply_body = rest.partition(b"\r\n\r\n")
        return int(status_line.split()[1]), self.unrewrite(reply_body.decode("latin-1"))

    def via_cli(self, body: object) -> dict | None:
        """The reply through opensips-cli, or None (HTTP transport, or a
        request the CLI cannot express)."""
        if self.cli is None:
            return None
        words = cli_words(body)
        if words is None:
            return None
        return json.loads(self.unrewrite(json.dumps(self.cli.call(
            [self.rewrite(w) for w in words]))))

    def exchange(self, ex: dict, expected_body: str) -> None:
        """One recorded request: the recorded reply must come back (over
        HTTP the exact status and body; through the CLI the same result or
        error, as the CLI shows them)."""
        try:
            body = json.loads(ex["request_body"])
        except ValueError:
            body = None
        reply = self.via_cli(body)
        if reply is None:
            status, text = self.send_raw(ex["request_raw"])
            assert (status, text) == (ex["status"], expected_body), ex["label"]
            return
        expected = json.loads(expected_body)
        expected["id"] = 1
        assert reply == expected, ex["label"]

    def mi(self, method: str, params: object = None, id_: int = 1) -> Any:
        """One MI call; ports in the reply are shown as the golden ones."""
        body: dict[str, object] = {"jsonrpc": "2.0", "method": method, "id": id_}
        if params is not None:
            body["params"] = params
        reply = self.via_cli(body) if id_ == 1 else None
        if reply is not None:
            return reply
        text = json.dumps(body)
        raw = (f"POST /mi HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(text)}\r\nConnection: close\r\n\r\n{text}")
        status, text_reply = self.send_raw(raw)
        assert status == 200
        return json.loads(text_reply)

    # -- wire
    def commands(self, golden_port: int, conn: int) -> list[str]:
        clients = self.sims[golden_port].clients
        if len(clients) < conn:
            return []
        return [c for c in clients[conn - 1].commands if c != PROBE_COMMAND]

    def wait_commands(self, golden_port: int, conn: int, expected: list[str], timeout: float = 5.0) -> None:
        expected = [self.rewrite(c) for c in expected]
        deadline = gevent.get_hub().loop.now() + timeout
        while self.commands(golden_port, conn) != expected:
            if gevent.get_hub().loop.now() > deadline:
                break
            gevent.sleep(0.02)
        assert self.commands(golden_port, conn) == expected, (golden_port, conn)

    def wait_closed(self, golden_port: int, conn: int, timeout: float = 3.0) -> None:
        client = self.sims[golden_port].clients[conn - 1]
        with gevent.Timeout(timeout, AssertionError(f"{golden_port} conn {conn} still open")):
            while client.alive:
                gevent.sleep(0.02)

    def stop(self) -> None:
        if self.cli is not None:
            self.cli.close()
        self.app.stop()
        for box in self.sims.values():
            box.stop()
        for holder in self._holders:
            holder.close()


def stack_factory(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """For a pytest fixture (`yield from`): a function that builds a Stack
    in `tmp_path`; every stack made is stopped when the fixture ends."""
    made: list[Stack] = []

    def make(**kwargs: Any) -> Stack:
        s = Stack(tmp_path, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def url(s: Stack, golden_port: int, creds: str = ":ClueCon@") -> str:
    """An fs_subscribe URL for the simulator standing in for `golden_port`."""
    return f"{creds}127.0.0.1:{s.port_map[golden_port]}"


def result(reply: dict) -> Any:
    assert "result" in reply, reply
    return reply["result"]


def error(reply: dict) -> Any:
    assert "error" in reply, reply
    return reply["error"]

"""A private, throw-away RabbitMQ broker on 127.0.0.1, for tests and benchmarks.

Runs Debian's `rabbitmq-server` package (3.10+) without its system service:
`/usr/lib/rabbitmq/bin/rabbitmq-server` in the foreground with its own state
folder, no plugins, the AMQP listener on 127.0.0.1:PORT (and, with
`tls=(ca, cert, key)`, a TLS listener on PORT+3), the Erlang distribution on
127.0.0.1:PORT+1 and its own `epmd` on 127.0.0.1:PORT+2 — started here as our
child (not the daemon the node would leave behind), so `stop()` ends both.
User guest/guest (loopback only).

    broker = Broker.start(folder)          # free ports, waits until ready (6-9 s)
    broker.stop(); broker.restart()        # graceful stop (~2 s), same state
    broker.ctl("list_queues")              # rabbitmqctl against this node
    broker.close()                         # stop broker and epmd

`python -m opensips_fs.tools.rabbitmq_broker [DIR]` runs one until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

__all__ = ["Broker", "BrokerError", "SERVER", "available"]

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
START_TIMEOUT = 60.0


class BrokerError(RuntimeError):
    pass


def available() -> bool:
    """rabbitmq-server (Debian's package) and epmd are installed."""
    return os.access(SERVER, os.X_OK) and shutil.which("epmd") is not None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(count: int = 4) -> int:
    """A port P with P..P+count-1 free on 127.0.0.1 (a fair guess, not a
    lock), below the kernel's ephemeral range so that no outgoing connection
    takes one of them meanwhile."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = max(low - count, 20000 + count)
    for _ in range(200):
        port = random.randrange(20000, top)
        if all(_port_free(port + i) for i in range(count)):
            return port
    raise BrokerError("no block of free ports on 127.0.0.1")


class Broker:
    """One broker node and its epmd (see the module docstring)."""

    def __init__(self, folder: Path, port: int, tls: tuple[str, str, str] | None = None):
        self.folder = Path(folder)
        self.port = port
        self.tls_port = port + 3 if tls else None
        self.tls = tls
        self.node = f"rmqtest{port}@localhost"
        self.server: subprocess.Popen | None = None
        self.epmd: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def ca_file(self) -> str | None:
        """The CA certificate that verifies the TLS listener (None without TLS)."""
        return self.tls[0] if self.tls else None

    # -- lifecycle ----------------------------------------------------------
    @classmethod
    def start(cls, folder: str | Path | None = None, tls: tuple[str, str, str] | None = None) -> "Broker":
        if not available():
            raise BrokerError(f"rabbitmq-server is not installed ({SERVER})")
        folder = Path(folder or tempfile.mkdtemp(prefix="opensips-fs-rmq-"))
        for attempt in range(3):   # a port taken meanwhile: try other ones
            broker = cls(folder / f"node{attempt}", free_port_block(), tls)
            broker._configure()
            broker._start_epmd()
            try:
                broker.up()
                return broker
            except BrokerError as exc:
                broker.close()
                error = exc
        raise error

    def _environment(self) -> dict:
        env = dict(os.environ)
        env.update({
            "HOME": str(self.folder / "home"),
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 1),
            "ERL_EPMD_PORT": str(self.port + 2),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_PID_FILE": str(self.folder / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        })
        return env

    def _configure(self) -> None:
        for sub in ("mnesia", "log", "home"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        (self.folder / "rabbitmq-env.conf").write_text("")
        (self.folder / "enabled_plugins").write_text("[].\n")
        lines = [f"listeners.tcp.default = 127.0.0.1:{self.port}",
                 "loopback_users.guest = true",
                 "log.console = true",
                 "log.console.level = warning",
                 "log.file.level = info"]
        if self.tls:
            ca, cert, key = self.tls
            lines += [f"listeners.ssl.default = 127.0.0.1:{self.tls_port}",
                      f"ssl_options.cacertfile = {ca}",
                      f"ssl_options.certfile = {cert}",
                      f"ssl_options.keyfile = {key}",
                      "ssl_options.verify = verify_none",
                      "ssl_options.fail_if_no_peer_cert = false"]
        (self.folder / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        cookie = self.folder / "home" / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(f"RMQTESTCOOKIE{self.port}")
        cookie.chmod(0o400)

    def _start_epmd(self) -> None:
        self.epmd = subprocess.Popen(
            ["epmd", "-port", str(self.port + 2), "-address", "127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=self._environment())

    def up(self, timeout: float = START_TIMEOUT) -> None:
        """Start the node (again) and wait until its AMQP port accepts."""
        if self.server is not None and self.server.poll() is None:
            return
        self._log = open(self.folder / "server.out", "ab")
        self.server = subprocess.Popen(
            [SERVER], cwd=self.folder, env=self._environment(), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise BrokerError(f"rabbitmq-server exited ({self.server.returncode}): "
                                  f"see {self.folder / 'server.out'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise BrokerError(f"rabbitmq-server not ready within {timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful stop (the node closes client connections with 320)."""
        server, self.server = self.server, None
        if server is None:
            return
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        else:
            # the node may outlive its shell: end the session's processes
            try:
                os.killpg(server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.up()

    def close(self) -> None:
        """Stop the node and its epmd."""
        self.stop()
        epmd, self.epmd = self.epmd, None
        if epmd is not None:
            epmd.terminate()
            try:
                epmd.wait(5)
            except subprocess.TimeoutExpired:
                epmd.kill()
                epmd.wait()

    # -- administration -----------------------------------------------------
    def ctl(self, *args: str, timeout: float = 30.0) -> str:
        """rabbitmqctl against this node; its stdout (raises on failure)."""
        done = subprocess.run([CTL, "-n", self.node, *args], env=self._environment(),
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise BrokerError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", help="state folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    try:
        broker = Broker.start(args.folder)
    except BrokerError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"RabbitMQ on 127.0.0.1:{broker.port} (node {broker.node}, state in {broker.folder}); "
          "Ctrl-C stops it", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

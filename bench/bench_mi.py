"""MI benchmark: HTTP, FIFO and datagram MI under 1 and 16 concurrent clients.

    .venv/bin/python bench/bench_mi.py [--duration S] [--repeat N] [--baseline DIR] [--quick]

Starts, all on 127.0.0.1: an `opensips-fs-sim` process with 20 simulated
FreeSWITCH boxes, and `python -m opensips_fs -f <generated config>` with
freeswitch, freeswitch_scripting (20 `fs_subscribe` sockets, so that
`fs_list` has 20 entries), httpd + mi_http, mi_fifo and mi_datagram (UDP).

With `--baseline DIR` (another checkout of opensips-fs, e.g. an older
commit), the same cases are run against that code too, in the same run, the
two services taking turns (baseline, current, baseline, …) for `--repeat`
rounds; each row prints the median of the rounds and the ratio of the
medians. The code under test is chosen with PYTHONPATH, so both run on the
same interpreter and libraries.

Clients (separate processes, never in the service's process):

* HTTP: `wrk` (C, one thread) with a Lua script posting the request —
  keep-alive connections, or `Connection: close` for one new connection per
  request; requests/s and wrk's p50/p99 latency;
* FIFO and datagram: a Python client driving N clients from one `selectors`
  loop (each client has its own reply FIFO / UDP socket and sends its next
  request as soon as its reply is in — N requests always in flight).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SOCKETS = 20

FS_LIST = b'{"jsonrpc":"2.0","method":"fs_list","id":1}'
WHICH = b'{"jsonrpc":"2.0","method":"which","id":1}'

# (row name, transport, body, concurrent clients, new connection per request)
Case = tuple[str, str, bytes, int, bool]
CASES: list[Case] = [
    ("http fs_list  1 conn", "http", FS_LIST, 1, False),
    ("http fs_list 16 conn", "http", FS_LIST, 16, False),
    ("http which   16 conn", "http", WHICH, 16, False),
    ("http fs_list 16 new conn/req", "http", FS_LIST, 16, True),
    ("fifo fs_list  1 client", "fifo", FS_LIST, 1, False),
    ("fifo fs_list 16 clients", "fifo", FS_LIST, 16, False),
    ("dgram fs_list  1 client", "dgram", FS_LIST, 1, False),
    ("dgram fs_list 16 clients", "dgram", FS_LIST, 16, False),
]
# Targets of the ratio to the baseline (row name -> minimum ratio).
TARGETS = {"http fs_list 16 conn": 2.0, "http which   16 conn": 2.0,
           "http fs_list 16 new conn/req": 1.2, "http fs_list  1 conn": 1.0}
P99_TARGET_MS = 2.0

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %s
wrk.headers["Content-Type"] = "application/json"
%s
done = function(summary, latency, requests)
  io.write(string.format("WRKRESULT %%d %%f %%f %%f %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status
    + summary.errors.timeout))
end
"""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------
# clients


def run_wrk(port: int, body: bytes, connections: int, close: bool, duration: float,
            workdir: Path) -> tuple[float, float, float]:
    script = workdir / f"wrk-{connections}-{int(close)}-{hash(body) & 0xffff}.lua"
    extra = 'wrk.headers["Connection"] = "close"' if close else ""
    script.write_text(WRK_SCRIPT % (json.dumps(body.decode()), extra))
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "-s", str(script),
                          f"http://127.0.0.1:{port}/mi"], capture_output=True, text=True, check=True)
    match = re.search(r"WRKRESULT (\d+) ([\d.]+) ([\d.]+) ([\d.]+) (\d+)", out.stdout)
    if not match:
        raise RuntimeError(f"wrk printed no result: {out.stdout}{out.stderr}")
    requests, micros, p50, p99, errors = match.groups()
    if int(errors):
        raise RuntimeError(f"wrk saw {errors} errors: {out.stdout}")
    return int(requests) / (float(micros) / 1e6), float(p50) / 1000, float(p99) / 1000


def _closed_loop(clients: Sequence[DatagramClient | FifoClient], duration: float) -> tuple[int, float, list[float]]:
    """clients: list of (fileobj, start(), finish(data) -> bool done); returns
    (done, elapsed, latencies)."""
    selector = selectors.DefaultSelector()
    clock = time.perf_counter
    latencies: list[float] = []
    started: dict[DatagramClient | FifoClient, float] = {}
    for client in clients:
        fileobj = client.start()
        started[client] = clock()
        selector.register(fileobj, selectors.EVENT_READ, client)
    done = 0
    t0 = clock()
    end = t0 + duration
    while started:
        for key, _ in selector.select(1.0):
            client = key.data
            if not client.read():
                continue
            now = clock()
            latencies.append(now - started[client])
            done += 1
            selector.unregister(key.fileobj)
            if now < end:
                fileobj = client.start()
                started[client] = clock()
                selector.register(fileobj, selectors.EVENT_READ, client)
            else:
                del started[client]
    return done, clock() - t0, latencies


class DatagramClient:
    def __init__(self, address: tuple[str, int], body: bytes):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.address = address
        self.body = body

    def start(self) -> socket.socket:
        self.sock.sendto(self.body, self.address)
        return self.sock

    def read(self) -> bool:
        try:
            self.sock.recv(65536)
        except BlockingIOError:
            return False
        return True


class FifoClient:
    """One opensips-cli-like client: `:name:json` to the server FIFO, the
    reply read from its own FIFO up to the end of file."""

    def __init__(self, server_fd: int, reply_dir: str, index: int, body: bytes):
        self.server_fd = server_fd
        self.name = f"bench_reply_{os.getpid()}_{index}"
        self.path = os.path.join(reply_dir, self.name)
        os.mkfifo(self.path, 0o600)
        self.request = b":" + self.name.encode() + b":" + body + b"\n"
        self.fd = -1
        self.got = False

    def start(self) -> int:
        # Open the reply FIFO before asking, so the server finds a reader.
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        os.write(self.server_fd, self.request)
        self.got = False
        return self.fd

    def read(self) -> bool:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return False
        if data:
            self.got = True
            return False
        if not self.got:   # no writer yet: EOF before the server opened it
            time.sleep(0.0001)
            return False
        os.close(self.fd)
        return True


# target: the datagram (host, port), or the FIFO's path and reply folder
def python_client(transport: str, target: tuple[str, Any], body: bytes, connections: int, duration: float,
                  queue: multiprocessing.Queue) -> None:
    clients: list
    if transport == "dgram":
        clients = [DatagramClient(target, body) for _ in range(connections)]
    else:
        fifo_path, reply_dir = target
        server_fd = os.open(fifo_path, os.O_WRONLY)
        clients = [FifoClient(server_fd, reply_dir, i, body) for i in range(connections)]
    try:
        done, elapsed, latencies = _closed_loop(clients, duration)
    finally:
        if transport == "fifo":
            for client in clients:
                os.unlink(client.path)
    latencies.sort()
    queue.put((done / elapsed, latencies[len(latencies) // 2] * 1000,
               latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000))


def run_python_client(transport: str, target: tuple[str, Any], body: bytes, connections: int,
                      duration: float) -> tuple[float, float, float]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    process = multiprocessing.Process(target=python_client,
                                      args=(transport, target, body, connections, duration, queue))
    process.start()
    result = queue.get(timeout=duration + 60)
    process.join()
    return result


# ---------------------------------------------------------------------------
# the processes under test


class Simulator:
    def __init__(self) -> None:
        self.ports = [free_port() for _ in range(SOCKETS)]
        args = [str(Path(PYTHON).with_name("opensips-fs-sim"))]
        for port in self.ports:
            args += ["--listen", f"127.0.0.1:{port}"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        for port in self.ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the simulator did not start")
                    time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Service:
    """opensips-fs from `tree` (None: this checkout) with every MI transport."""

    def __init__(self, tree: Path | None, sim: Simulator, workdir: Path, label: str):
        self.http_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.fifo = str(workdir / f"{label}.fifo")
        self.reply_dir = str(workdir / f"{label}-replies")
        os.makedirs(self.reply_dir, exist_ok=True)
        lines = ["log_level=1", "log_stderror=yes",
                 'loadmodule "freeswitch.so"', 'loadmodule "freeswitch_scripting.so"']
        lines += [f'modparam("freeswitch_scripting", "fs_subscribe", ":ClueCon@127.0.0.1:{port}?HEARTBEAT")'
                  for port in sim.ports]
        lines += ['loadmodule "httpd.so"', 'modparam("httpd", "ip", "127.0.0.1")',
                  f'modparam("httpd", "port", {self.http_port})', 'loadmodule "mi_http.so"',
                  'loadmodule "mi_fifo.so"', f'modparam("mi_fifo", "fifo_name", "{self.fifo}")',
                  f'modparam("mi_fifo", "reply_dir", "{self.reply_dir}")',
                  'loadmodule "mi_datagram.so"',
                  f'modparam("mi_datagram", "socket_name", "udp:127.0.0.1:{self.udp_port}")']
        config = workdir / f"{label}.cfg"
        config.write_text("\n".join(lines) + "\n")
        env = dict(os.environ)
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        self.log = workdir / f"{label}.log"
        self.process = subprocess.Popen([PYTHON, "-m", "opensips_fs", "-f", str(config)], env=env,
                                        cwd=workdir, stdout=subprocess.DEVNULL,
                                        stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"opensips-fs ({label}) exited: {self.log.read_text()}")
            try:
                if len(self.call(FS_LIST)["result"]["Sockets"]) >= SOCKETS:
                    break
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"opensips-fs ({label}) did not list {SOCKETS} sockets")
            time.sleep(0.1)
        self.fs_list_bytes = len(json.dumps(self.call(FS_LIST)["result"]))

    def call(self, body: bytes) -> Any:
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=2) as sock:
            sock.sendall(b"POST /mi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return json.loads(data.partition(b"\r\n\r\n")[2])

    def cpu_seconds(self) -> float:
        """User + system CPU time the service has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def run(self, case: Case, duration: float, workdir: Path) -> tuple[float, float, float, float]:
        """(requests/s, p50 ms, p99 ms, service CPU µs per request)."""
        _, transport, body, connections, new_conn = case
        cpu0 = self.cpu_seconds()
        if transport == "http":
            rps, p50, p99 = run_wrk(self.http_port, body, connections, new_conn, duration, workdir)
        else:
            target = ("127.0.0.1", self.udp_port) if transport == "dgram" else (self.fifo, self.reply_dir)
            rps, p50, p99 = run_python_client(transport, target, body, connections, duration)
        cpu = self.cpu_seconds() - cpu0
        return rps, p50, p99, cpu / (rps * duration) * 1e6

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


# ---------------------------------------------------------------------------


def git_describe(tree: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True).stdout.strip()[:60]
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per case and round (default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are printed (default 3)")
    parser.add_argument("--baseline", type=Path, help="another opensips-fs checkout to compare with")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    parser.add_argument("--cases", help="only the rows whose name contains this text")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeat = 2.0, 1
    cases = [c for c in CASES if not args.cases or args.cases in c[0]]

    trees: list[tuple[str, Path | None, Path]] = [("current", None, ROOT)]
    if args.baseline:
        trees.insert(0, ("baseline", args.baseline.resolve(), args.baseline.resolve()))
    print(f"MI benchmark, {platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for label, _, tree in trees:
        print(f"  {label}: {tree} ({git_describe(tree)})")
    print(f"  {SOCKETS} sockets subscribed; {args.repeat} rounds of {args.duration:g} s per case; medians")

    results: dict = {label: {c[0]: [] for c in cases} for label, _, _ in trees}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sim = Simulator()
        services = {}
        try:
            for label, code_tree, _ in trees:
                services[label] = Service(code_tree, sim, workdir, label)
            for round_ in range(args.repeat):
                for case in cases:
                    for label, _, _ in trees:
                        results[label][case[0]].append(services[label].run(case, args.duration, workdir))
        finally:
            for service in services.values():
                service.stop()
            sim.stop()

    def median(rows: list[tuple[float, ...]], i: int) -> float:
        return statistics.median(r[i] for r in rows)

    header = f"{'case':<30} " + " ".join(
        f"{label + ' req/s':>16} {'p50 ms':>7} {'p99 ms':>7} {'cpu us':>6}" for label, _, _ in trees)
    if args.baseline:
        header += f" {'ratio':>6} {'target':>9} {'cpu/req ratio':>13}"
    print(header)
    for case in cases:
        name = case[0]
        line = f"{name:<30} "
        line += " ".join(f"{median(results[label][name], 0):>16,.0f} {median(results[label][name], 1):>7.3f} "
                         f"{median(results[label][name], 2):>7.3f} {median(results[label][name], 3):>6.1f}"
                         for label, _, _ in trees)
        if args.baseline:
            ratio = median(results["current"][name], 0) / median(results["baseline"][name], 0)
            target = TARGETS.get(name)
            verdict = "" if target is None else (f">={target:g}x " + ("ok" if ratio >= target else "NO"))
            cpu_ratio = median(results["baseline"][name], 3) / median(results["current"][name], 3)
            line += f" {ratio:>5.2f}x {verdict:>9} {cpu_ratio:>12.2f}x"
        print(line)
    if "http fs_list 16 conn" in results["current"]:
        p99 = median(results["current"]["http fs_list 16 conn"], 2)
        print(f"p99 at 16 keep-alive connections (fs_list): {p99:.3f} ms "
              f"(target < {P99_TARGET_MS:g} ms: {'ok' if p99 < P99_TARGET_MS else 'NO'})")


if __name__ == "__main__":
    main()

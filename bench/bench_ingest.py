"""Ingest benchmark: how many events per second `EslManager` takes in from
1 and from 20 simulated FreeSWITCH servers, next to the rate a bare socket
reader drains the very same stream on the same machine (the floor).

    .venv/bin/python bench/bench_ingest.py [--events 200000] [--size 2000] [--sockets 1,20]

The simulators run in a separate process (`opensips-fs-sim`, one
`--listen` per server, driven through its `--control` socket) so that
generating events does not compete with the reader for the interpreter.
For each socket count the benchmark
subscribes `CHANNEL_CREATE` on every connection, asks the simulators for a
burst (each server sends its share as fast as the client reads), and times
from the request to the last event counted:

* floor: one greenlet per connection, `recv()` into a buffer and count
  frames (blank line, Content-Length, skip the body) — nothing else;
* manager: the full path (parser, reply FIFO, event-name scan, routing,
  counters) into a trivial `event_sink` that counts.

It prints events/s for both and the ratio (target: manager >= 50 % of floor).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from typing import TYPE_CHECKING

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent import socket  # noqa: E402

if TYPE_CHECKING:
    from opensips_fs.esl.socket import EslSocket

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

PASSWORD = "ClueCon"
EVENT = "CHANNEL_CREATE"


# ---------------------------------------------------------------------------
# The simulators: `opensips-fs-sim` in a child process, driven by its control socket

def _sim_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "opensips-fs-sim")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "opensips_fs.sim.cli"]


class SimHost:
    """`opensips-fs-sim --listen 127.0.0.1:0` × count, plus `--control`."""

    def __init__(self, count: int):
        argv = _sim_command() + ["--password", PASSWORD, "--heartbeat", "0", "--control", "127.0.0.1:0"]
        for _ in range(count):
            argv += ["--listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None  # a PIPE
        self.proc_out = self.proc.stdout
        self.ports = []
        control = None
        while control is None:
            line = self.proc_out.readline()
            if not line:
                raise SystemExit(f"opensips-fs-sim exited with {self.proc.wait()}")
            address = line.rsplit(" on ", 1)[-1].split()[0]
            if "control on" in line:
                control = address
            elif "FreeSWITCH ESL on" in line:
                self.ports.append(int(address.rsplit(":", 1)[1]))
        host, port = control.rsplit(":", 1)
        self.control = socket.create_connection((host, int(port)))
        self.replies = self.control.makefile("rb")

    def burst(self, per_sim: int, size: int) -> None:
        request = {"op": "burst", "count": per_sim, "name": EVENT, "size": size}
        self.control.sendall(json.dumps(request).encode() + b"\n")

    def wait_done(self) -> None:
        answer = json.loads(self.replies.readline())
        assert answer.get("ok"), answer

    def close(self) -> None:
        self.control.close()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Run(types.SimpleNamespace):
    """rate: events/s (wall clock); cpu_us: CPU µs of this process per event;
    frame: average frame bytes."""

    def __init__(self, rate: float, cpu_us: float, frame: float):
        super().__init__(rate=rate, cpu_us=cpu_us, frame=frame)


# ---------------------------------------------------------------------------
# The floor: a bare reader that only counts frames

def _read_reply(sock: socket.socket, buf: bytes) -> bytes:
    while b"\n\n" not in buf:
        buf += sock.recv(65536)
    return buf[buf.index(b"\n\n") + 2:]


def bare_connect(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port))
    rest = _read_reply(sock, b"")  # auth/request
    sock.sendall(b"auth %s\n\n" % PASSWORD.encode())
    rest = _read_reply(sock, rest)
    sock.sendall(b"event json %s\n\n" % EVENT.encode())
    rest = _read_reply(sock, rest)
    return sock, rest


def bare_count(sock: socket.socket, rest: bytes, state: dict, target: int, done: gevent.event.Event) -> None:
    buf = rest
    recv = sock.recv
    while state["n"] < target:
        data = recv(262144)
        if not data:
            return
        buf = buf + data if buf else data
        pos = 0
        size = len(buf)
        find = buf.find
        frames = 0
        while True:
            end = find(b"\n\n", pos)
            if end < 0:
                break
            at = find(b"Content-Length: ", pos, end)
            length = int(buf[at + 16:find(b"\n", at, end + 1)]) if at >= 0 else 0
            stop = end + 2 + length
            if stop > size:
                break
            pos = stop
            frames += 1
        buf = buf[pos:]
        state["bytes"] += pos
        state["n"] += frames
        if state["n"] >= target:
            done.set()


def run_floor(host: SimHost, n: int, per_sim: int, size: int) -> Run:
    conns = [bare_connect(port) for port in host.ports[:n]]
    state = {"n": 0, "bytes": 0}
    done = gevent.event.Event()
    target = per_sim * n
    readers = [gevent.spawn(bare_count, sock, rest, state, target, done) for sock, rest in conns]
    t0, c0 = time.perf_counter(), time.process_time()
    host.burst(per_sim, size)
    done.wait()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    host.wait_done()
    for glet in readers:
        glet.kill()
    for sock, _ in conns:
        sock.close()
    return Run(target / elapsed, cpu / target * 1e6, state["bytes"] / state["n"])


# ---------------------------------------------------------------------------
# The manager

def run_manager(host: SimHost, n: int, per_sim: int, size: int) -> tuple["Run", dict]:
    from opensips_fs.config import FreeswitchSettings
    from opensips_fs.esl.manager import EslManager
    from opensips_fs.stats import Stats

    settings = FreeswitchSettings()
    stats = Stats()
    mgr = EslManager(settings, stats)
    target = per_sim * n
    done = gevent.event.Event()
    count = [0]

    def sink(sock: EslSocket, name: str, body: bytes) -> None:
        count[0] += 1
        if count[0] >= target:
            done.set()

    mgr.event_sink = sink
    mgr.start()
    socks = []
    for port in host.ports[:n]:
        sock = mgr.get("127.0.0.1", port, None, PASSWORD)
        sock.ref()
        sock.subscribe(EVENT)
        socks.append(sock)
    deadline = time.monotonic() + 10
    while not all(s.status()["events"] == [EVENT] for s in socks):
        if time.monotonic() > deadline:
            raise SystemExit("manager did not subscribe within 10 s")
        gevent.sleep(0.01)
    t0, c0 = time.perf_counter(), time.process_time()
    host.burst(per_sim, size)
    done.wait()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    host.wait_done()
    figures = {s.name: s.value for s in stats if s.group == "freeswitch"}
    mgr.stop()
    gevent.sleep(0.2)
    return Run(target / elapsed, cpu / target * 1e6, 0), figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per run (split over the sockets)")
    parser.add_argument("--size", type=int, default=2000, help="extra payload bytes per event (typical 2-5 KB)")
    parser.add_argument("--sockets", default="1,20", help="comma-separated socket counts")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure; the best is kept")
    args = parser.parse_args()
    counts = [int(c) for c in args.sockets.split(",")]
    host = SimHost(max(counts))
    try:
        print(f"ingest benchmark: {args.events} events per run, best of {args.rounds}, "
              f"{os.cpu_count()} CPUs, simulators in a separate process")
        print(f"{'sockets':>7} {'frame B':>8} {'floor ev/s':>11} {'manager ev/s':>13} {'ratio':>6}"
              f"   {'CPU us/ev floor':>15} {'manager':>8} {'ratio':>6}")
        for n in counts:
            per_sim = max(1, args.events // n)
            floor = max((run_floor(host, n, per_sim, args.size) for _ in range(args.rounds)),
                        key=lambda r: r.rate)
            results = [run_manager(host, n, per_sim, args.size) for _ in range(args.rounds)]
            best, figures = max(results, key=lambda r: r[0].rate)
            assert figures["events_dropped"] == 0 and figures["events_relayed"] == per_sim * n, figures
            print(f"{n:>7} {floor.frame:>8,.0f} {floor.rate:>11,.0f} {best.rate:>13,.0f} "
                  f"{best.rate / floor.rate:>6.0%}   {floor.cpu_us:>15.2f} {best.cpu_us:>8.2f} "
                  f"{floor.cpu_us / best.cpu_us:>6.0%}", flush=True)
        print("ratio = manager / floor (target >= 50 %); the CPU columns count this process only, "
              "so they hold even when the simulator process is the bottleneck")
    finally:
        host.close()


if __name__ == "__main__":
    main()

"""Memory per connected ESL socket, at 1,000 and 10,000 sockets in one
process, while they relay events; what 10,000 unreachable sockets cost
while they fail; and, for both, whether the memory comes back once they are
all dropped.

    .venv/bin/python bench/bench_esl_sockets.py [--sockets 1000,10000] [--seconds 5] [--unreachable 10000]

Connected (one process): peer processes (a minimal ESL server written for
this bench: it greets, accepts the login and `event json`, and sends every
subscribed connection one CUSTOM event a second) listen on as many ports of
127.0.0.1 as the largest count, spread over several processes so that none
needs more than a few thousand file descriptors. This process builds an
`EslManager` and prints its idle RSS; then, for each count N in turn, it
adds sockets (one per port) up to N, subscribes each to CUSTOM, waits until
all are connected and subscribed, and prints the RSS, the cost per socket
over idle and the events relayed per second over `--seconds`. Then it drops
every socket and prints the RSS once it has settled, and its ratio to idle.

Unreachable (a fresh process): a helper process binds `--unreachable` ports
of 127.0.0.1 without listening (every connection is refused); this process
references a socket to each, lets them fail for 15 s (CPU used, connect
failures: the backoff is 1, 2, 4 … 60 s per socket), then drops them all and
prints the RSS idle, while failing and once settled, with its ratio to idle.

"Settled": sampled every second until three samples agree within 1 %; the
bench forces no collection or trim there — what the manager does by itself
(`heap.trim()` once many sockets went) is what is measured.

File descriptors: one per socket here, two per socket on the peers' side.
The bench raises its own soft `RLIMIT_NOFILE` to the hard limit (and the
peers theirs); with a hard limit under N + 100 it says so and stops — raise
it (`ulimit -Hn`, or `LimitNOFILE=` in the systemd unit) first.
"""

from __future__ import annotations

import argparse
import gc
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from opensips_fs.config import FreeswitchSettings  # noqa: E402
from opensips_fs.esl.manager import EslManager  # noqa: E402
from opensips_fs.esl.socket import EslSocket  # noqa: E402
from opensips_fs.stats import Stats  # noqa: E402

PER_PEER = 2500  # ports per peer process

PEER = r'''
import os, resource, sys, time
from gevent import monkey; monkey.patch_all()
import gevent, gevent.server
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
count = int(sys.argv[1])
subscribed = set()
body = b'{"Event-Name":"CUSTOM","Event-Subclass":"bench::tick","Core-UUID":"bench","Event-Sequence":"1"}'
frame = b"Content-Length: %d\nContent-Type: text/event-json\n\n%s" % (len(body), body)

def handle(sock, addr):
    try:
        sock.sendall(b"Content-Type: auth/request\n\n")
        buf = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return
            buf += data
            while b"\n\n" in buf:
                command, _, buf = buf.partition(b"\n\n")
                if command.startswith((b"auth ", b"userauth ")):
                    sock.sendall(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
                elif command.startswith(b"event json "):
                    sock.sendall(b"Content-Type: command/reply\nReply-Text: +OK event listener enabled json\n\n")
                    subscribed.add(sock)
                else:
                    sock.sendall(b"Content-Type: command/reply\nReply-Text: -ERR command not found\n\n")
    except OSError:
        pass
    finally:
        subscribed.discard(sock)

servers = []
for _ in range(count):
    server = gevent.server.StreamServer(("127.0.0.1", 0), handle, backlog=1024)
    server.start()
    servers.append(server)
print(" ".join(str(s.server_port) for s in servers), flush=True)

def tick():
    while True:
        gevent.sleep(1.0)
        for sock in list(subscribed):
            try:
                sock.sendall(frame)
            except OSError:
                subscribed.discard(sock)

gevent.spawn(tick)
while os.getppid() != 1:  # until the bench stops us (or is gone)
    gevent.sleep(1.0)
'''


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_peers(n: int) -> tuple[list[subprocess.Popen], list[int]]:
    procs, ports = [], []
    left = n
    while left > 0:
        count = min(PER_PEER, left)
        left -= count
        proc = subprocess.Popen([sys.executable, "-c", PEER, str(count)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
    for proc in procs:
        assert proc.stdout is not None
        ports += [int(p) for p in proc.stdout.readline().split()]
    return procs, ports


def add_sockets(mgr: EslManager, ports: list[int], event: str, sockets: list, pause_every: int = 0) -> None:
    """A referenced socket subscribed to `event` for each port, appended to
    `sockets`; with `pause_every`, the supervisors get to run as we go."""
    for i, port in enumerate(ports, 1):
        sock = mgr.get("127.0.0.1", port, None, "ClueCon")
        sock.ref()
        sock.subscribe(event)
        sockets.append(sock)
        if pause_every and i % pause_every == 0:
            gevent.sleep(0)


def drop_all(sockets: list, event: str) -> None:
    """Unreference every socket, emptying `sockets`: once this returns the
    bench itself holds none of them (a leftover loop variable would keep a
    socket, and the heap arenas its objects sit in, alive)."""
    while sockets:
        sock = sockets.pop()
        sock.unsubscribe(event)
        sock.unref()


def settled_rss_kib(least: float = 10.0, limit: float = 60.0) -> tuple[int, float]:
    """RSS once it stops moving — after at least `least` seconds (the
    manager hands memory back a tick or two after the last socket went),
    three samples a second apart within 1 % of each other — and the seconds
    that took. Nothing forces a collection: what the manager does by itself
    is what is measured."""
    t0 = time.monotonic()
    samples = [rss_kib()]
    while time.monotonic() - t0 < limit:
        gevent.sleep(1.0)
        samples.append(rss_kib())
        last = samples[-3:]
        if time.monotonic() - t0 >= least and max(last) - min(last) <= max(last) // 100:
            break
    return samples[-1], time.monotonic() - t0


def run(counts: list[int], seconds: float) -> None:
    """Idle, then `counts` sockets (growing in one process), then none."""
    procs, ports = start_peers(max(counts))
    try:
        stats = Stats()
        mgr = EslManager(FreeswitchSettings(esl_connect_timeout=30000), stats)
        relayed = [0]

        def sink(sock: EslSocket, name: str, body: bytes) -> None:
            relayed[0] += 1

        mgr.event_sink = sink
        mgr.start()
        gc.collect()
        idle = rss_kib()
        print(f"connected: idle RSS {idle / 1024:.1f} MB")
        sockets: list = []
        for n in counts:
            t0 = time.monotonic()
            add_sockets(mgr, ports[len(sockets):n], "CUSTOM", sockets, pause_every=200)
            deadline = time.monotonic() + 120
            while sum(1 for s in sockets if s.settled()) < n:
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {sum(1 for s in sockets if s.settled())} of {n} sockets connected")
                gevent.sleep(0.2)
            setup = time.monotonic() - t0
            gevent.sleep(2.0)  # a couple of events through every socket
            gc.collect()
            after = rss_kib()
            relayed[0] = 0
            gevent.sleep(seconds)
            rate = relayed[0] / seconds
            per_socket = (after - idle) * 1024 / n
            print(f"{n:>6} sockets: connected and subscribed in {setup:.1f} s; RSS {after / 1024:.1f} MB "
                  f"= {per_socket / 1024:.1f} KB per socket over idle "
                  f"({per_socket / (30 * 1024):.2f} of the 30 KB target); relaying {rate:,.0f} events/s "
                  f"({rate / n:.2f} per socket per s, the peers send 1)")
        drop_all(sockets, "CUSTOM")
        settled, took = settled_rss_kib()
        print(f"  all {max(counts):,} dropped: RSS {settled / 1024:.1f} MB once settled ({took:.0f} s) = "
              f"{settled / idle:.2f}x idle (target <= 1.5x; {len(mgr.sockets())} sockets left)")
        mgr.stop()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


HOLDER = r'''
import os, resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
holders = []
for _ in range(int(sys.argv[1])):
    h = socket.socket()
    h.bind(("127.0.0.1", 0))
    holders.append(h)
print(" ".join(str(h.getsockname()[1]) for h in holders), flush=True)
while os.getppid() != 1:
    time.sleep(1)
'''


def run_unreachable(n: int) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(n)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        ports = [int(p) for p in holder.stdout.readline().split()]
        stats = Stats()
        mgr = EslManager(FreeswitchSettings(), stats)
        mgr.start()
        gc.collect()
        before = rss_kib()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        sockets: list = []
        add_sockets(mgr, ports, "DTMF", sockets)
        gevent.sleep(15.0)
        elapsed = time.monotonic() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / elapsed
        failures = next(s.value for s in stats if s.group == "freeswitch" and s.name == "connect_failures")
        failing = rss_kib()
        drop_all(sockets, "DTMF")
        settled, took = settled_rss_kib()
        print(f"unreachable: idle RSS {before / 1024:.1f} MB")
        print(f"{n:>6} unreachable: {failures:,} connect failures in {elapsed:.0f} s (backoff 1, 2, 4 … 60 s: "
              f"in the long run {n / 60:,.0f}/s), CPU {cpu * 100:.0f} % of a core; RSS {failing / 1024:.1f} MB "
              f"while failing")
        print(f"  all {n:,} dropped: RSS {settled / 1024:.1f} MB once settled ({took:.0f} s) = "
              f"{settled / before:.2f}x idle (target <= 1.5x; {len(mgr.sockets())} sockets left)")
        mgr.stop()
    finally:
        holder.terminate()
        holder.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", default="1000,10000", help="comma-separated socket counts")
    parser.add_argument("--seconds", type=float, default=5.0, help="relay measurement per count")
    parser.add_argument("--unreachable", type=int, default=10000, help="unreachable sockets (0: skip)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one measurement, in a fresh process
    args = parser.parse_args()
    counts = [int(c) for c in args.sockets.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(counts) + 100
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {need}: raise it (ulimit -Hn) and run again")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logging.getLogger("opensips_fs").setLevel(logging.ERROR)  # 10,000 failing sockets each say so once
    if args.case:
        kind, n = args.case.split(":")
        if kind == "unreachable":
            run_unreachable(int(n))
        else:
            run([int(c) for c in n.split(",")], args.seconds)
        return
    print(f"RLIMIT_NOFILE raised from {soft} to {hard}; peers: {PER_PEER} ports per process; "
          "each case runs in a fresh process")
    cases = [f"unreachable:{args.unreachable}"] if args.unreachable else []
    for case in cases + [f"connected:{','.join(str(n) for n in sorted(counts))}"]:
        subprocess.run([sys.executable, __file__, "--case", case, "--seconds", str(args.seconds)], check=True)


if __name__ == "__main__":
    main()

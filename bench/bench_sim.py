"""Benchmark: how fast the simulator (a real ``opensips-fs-sim`` process)
delivers a burst of events to a fast bare-socket reader.

    .venv/bin/python bench/bench_sim.py [--count 100000] [--format json|plain|xml]
                                        [--size BYTES] [--readers N]

Prints events/s (and MB/s) per reader and overall, and checks that every
Event-Sequence arrived exactly once, in order. Never asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ_RE = {
    "json": re.compile(rb'"Event-Sequence":"(\d+)"'),
    "plain": re.compile(rb"\nEvent-Sequence: (\d+)\n"),
    "xml": re.compile(rb"<Event-Sequence>(\d+)</Event-Sequence>"),
}


def start_sim(extra: Sequence[str] = ()) -> tuple[subprocess.Popen[str], tuple[str, int], tuple[str, int]]:
    exe = os.path.join(os.path.dirname(sys.executable), "opensips-fs-sim")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "opensips_fs.sim.cli"]
    proc = subprocess.Popen(cmd + ["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0",
                                   "--heartbeat", "0", *extra],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None  # a PIPE
    esl = control = None
    while esl is None or control is None:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("simulator did not start")
        m = re.search(r"ESL on ([\d.]+):(\d+)", line)
        if m:
            esl = (m.group(1), int(m.group(2)))
        m = re.search(r"control on ([\d.]+):(\d+)", line)
        if m:
            control = (m.group(1), int(m.group(2)))
    return proc, esl, control


class Reader:
    """A bare ESL client: auth, subscribe, then count frames as they come."""

    def __init__(self, addr: tuple[str, int], fmt: str, subscribe: bytes = b"CUSTOM sim::burst"):
        self.sock = socket.create_connection(addr)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.fmt = fmt
        self.buf = b""
        self._expect(b"auth/request")
        self.sock.sendall(b"auth ClueCon\n\n")
        self._expect(b"+OK accepted")
        self.sock.sendall(b"event %s %s\n\n" % (fmt.encode(), subscribe))
        self._expect(b"+OK event listener enabled")
        self.count = 0
        self.bytes = 0
        self.seqs_ok = True
        self.last_seq: int | None = None
        self.t_first: float | None = None
        self.t_last = 0.0

    def _expect(self, marker: bytes) -> None:
        while b"\n\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        block, _, self.buf = self.buf.partition(b"\n\n")
        if marker not in block:
            raise SystemExit("unexpected reply %r" % block)

    def run(self, want: int, until: float | None = None) -> None:
        sock, seq_re = self.sock, SEQ_RE[self.fmt]
        if until is not None:
            sock.settimeout(0.2)
        buf = self.buf
        pos = 0
        while self.count < want and (until is None or time.perf_counter() < until):
            try:
                data = sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                break
            if self.t_first is None:
                self.t_first = time.perf_counter()
            self.bytes += len(data)
            buf = buf[pos:] + data if pos else buf + data
            pos = 0
            while True:
                end = buf.find(b"\n\n", pos)
                if end < 0:
                    break
                # event frames start with "Content-Length: N"
                length = int(buf[pos + 16:buf.index(b"\n", pos)])
                stop = end + 2 + length
                if stop > len(buf):
                    break
                m = seq_re.search(buf, end, stop)
                assert m is not None, "an event without Event-Sequence"
                seq = int(m.group(1))
                if self.last_seq is not None and seq != self.last_seq + 1:
                    self.seqs_ok = False
                self.last_seq = seq
                self.count += 1
                pos = stop
        self.t_last = time.perf_counter()


def control(addr: tuple[str, int], request: dict) -> socket.socket:
    sock = socket.create_connection(addr)
    sock.sendall(json.dumps(request).encode() + b"\n")
    return sock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100000)
    ap.add_argument("--format", choices=("json", "plain", "xml"), default="json")
    ap.add_argument("--size", type=int, default=0, help="extra payload bytes per event")
    ap.add_argument("--readers", type=int, default=1)
    ap.add_argument("--calls-per-second", type=int, default=0,
                    help="instead of a burst: run synthetic calls for --seconds and count CHANNEL_* events")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    if args.calls_per_second:
        return bench_calls(args)
    proc, esl, ctl = start_sim()
    try:
        readers = [Reader(esl, args.format) for _ in range(args.readers)]
        req = {"op": "burst", "count": args.count}
        if args.size:
            req["size"] = args.size
        t0 = time.perf_counter()
        csock = control(ctl, req)
        threads = [threading.Thread(target=r.run, args=(args.count,)) for r in readers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t1 = time.perf_counter()
        answer = csock.makefile().readline().strip()
        print("opensips-fs-sim burst: %d events, format %s, %d reader(s), extra payload %d B"
              % (args.count, args.format, args.readers, args.size))
        for i, r in enumerate(readers):
            secs = r.t_last - t0
            print("  reader %d: %d events in %.3f s = %.0f events/s, %.1f MB/s, avg frame %.0f B, "
                  "sequences contiguous: %s" % (i + 1, r.count, secs, r.count / secs,
                                                r.bytes / secs / 1e6, r.bytes / max(r.count, 1),
                                                r.seqs_ok))
        total = sum(r.count for r in readers)
        print("  overall: %.0f events/s delivered (%.2fx the 38,000 events/s opensips-fs must relay)"
              % (total / (t1 - t0), total / (t1 - t0) / 38000))
        print("  control answer: %s" % answer)
    finally:
        proc.terminate()
        proc.wait(5)


def bench_calls(args: argparse.Namespace) -> None:
    proc, esl, _ = start_sim(["--calls-per-second", str(args.calls_per_second), "--call-duration", "1"])
    try:
        reader = Reader(esl, args.format, b"ALL")
        warmup = 2.0  # calls last 1 s: after that each second carries whole calls
        reader.run(10 ** 12, until=time.perf_counter() + warmup)
        reader.count = reader.bytes = 0
        t0 = time.perf_counter()
        reader.run(10 ** 12, until=t0 + args.seconds)
        secs = time.perf_counter() - t0
        print("opensips-fs-sim calls: %d calls/s asked, measured %.1f s after a %.0f s warm-up, format %s" % (
            args.calls_per_second, args.seconds, warmup, args.format))
        print("  %d CHANNEL_* events = %.0f events/s (%.1f events per call), %.1f MB/s, avg frame %.0f B,"
              " sequences contiguous: %s" % (reader.count, reader.count / secs,
                                             reader.count / max(1, args.calls_per_second * secs),
                                             reader.bytes / secs / 1e6, reader.bytes / max(reader.count, 1),
                                             reader.seqs_ok))
    finally:
        proc.terminate()
        proc.wait(5)


if __name__ == "__main__":
    main()

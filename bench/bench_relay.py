"""Relay benchmark: FreeSWITCH events -> opensips-fs -> EVI subscribers.

    .venv/bin/python bench/bench_relay.py [--quick] [--duration S] [--sockets 1,20]
                                          [--settle S] [--code DIR]

Three processes, all on 127.0.0.1:

* a generator running `opensips-fs-sim` boxes (the `opensips_fs.sim`
  library, one box per ESL socket) that emits CHANNEL_STATE events of real
  size (0.9-2.5 KB of JSON, sizes spread evenly), each carrying its sequence
  number and its send time; at full speed it follows the ESL reader's pace
  (back-pressure, nothing lost on the ESL side), at a fixed offered rate it
  paces itself on the clock;
* `opensips-fs -f <generated config>` subscribed (fs_subscribe modparams)
  to CHANNEL_STATE on 1 or 20 of those sockets;
* this process: the subscribers (1 UDP, 1 TCP, or 4 UDP), subscribed over
  MI; each counts unique sequence numbers and the latency from the send
  time to the arrival.

For each case it prints events/s per subscriber, loss, p50/p99 latency and
the ratio to OpenSIPS 4.1 measured on the same machine kind (12,700 ev/s to
one UDP subscriber, 10,000 to one TCP subscriber, 6,900 per subscriber with
four; p50 0.5-1.5 ms at 5,000 ev/s). Target: 3x the rates with zero loss,
a lower p50 at 5,000 ev/s.

Memory: the resident set of opensips-fs is sampled every 20 ms. Each case
prints its peak RSS; after the cases of a socket count the rig stays idle
`--settle` seconds (default 60) and prints the idle RSS before the runs, the
peak over all of them and the settled RSS, with the ratio settled/idle.
Targets: peak <= 150 MB during max-rate runs, settled <= 1.5x idle.

`--code DIR` runs the opensips-fs found in the source tree DIR (another
checkout, e.g. an older commit) instead of this one, with this benchmark
and this venv: the same run for both, to compare them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gevent
    from gevent import socket as gsocket

    from opensips_fs.sim.client import SimClient

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

OPENSIPS = {"udp": 12700, "tcp": 10000, "4udp": 6900}
OPENSIPS_P50_MS = (0.5, 1.5)
SEQ_KEY = "Bench-Seq"
SENT_KEY = "Bench-Sent"


# ---------------------------------------------------------------------------
# generator process (runs the simulator boxes)

def event_body_parts(size: int) -> tuple[bytes, bytes, bytes]:
    """A CHANNEL_STATE event JSON of about `size` bytes, split around the
    sequence number and send-time values."""
    uuid = "5a5a0000-1111-4222-8333-444455556666"
    headers = [
        ("Event-Name", "CHANNEL_STATE"), ("Core-UUID", "2a1b4c3d-0000-4000-8000-00000000c0de"),
        ("FreeSWITCH-Hostname", "bench"), ("FreeSWITCH-Switchname", "bench"),
        ("FreeSWITCH-IPv4", "192.0.2.2"), ("FreeSWITCH-IPv6", "::1"),
        ("Event-Date-Local", "2026-11-26 12:00:00"), ("Event-Date-GMT", "Thu, 26 Nov 2026 12:00:00 GMT"),
        ("Event-Date-Timestamp", "1795694400000000"), ("Event-Calling-File", "switch_channel.c"),
        ("Event-Calling-Function", "switch_channel_perform_set_running_state"),
        ("Event-Calling-Line-Number", "2135"), ("Event-Sequence", "4242"),
        ("Channel-State", "CS_ROUTING"), ("Channel-Call-State", "RINGING"),
        ("Channel-State-Number", "2"), ("Channel-Name", "sofia/internal/1001@192.0.2.2"),
        ("Unique-ID", uuid), ("Call-Direction", "inbound"), ("Presence-Call-Direction", "inbound"),
        ("Channel-HIT-Dialplan", "true"), ("Channel-Presence-ID", "1001@192.0.2.2"),
        ("Channel-Call-UUID", uuid), ("Answer-State", "ringing"),
        ("Caller-Direction", "inbound"), ("Caller-Logical-Direction", "inbound"),
        ("Caller-Username", "1001"), ("Caller-Dialplan", "XML"),
        ("Caller-Caller-ID-Name", "Alice"), ("Caller-Caller-ID-Number", "1001"),
        ("Caller-Network-Addr", "192.0.2.10"), ("Caller-ANI", "1001"),
        ("Caller-Destination-Number", "9664"), ("Caller-Unique-ID", uuid),
        ("Caller-Source", "mod_sofia"), ("Caller-Context", "default"),
        ("Caller-Channel-Name", "sofia/internal/1001@192.0.2.2"),
        ("Caller-Profile-Index", "1"), ("Caller-Profile-Created-Time", "1795694400000000"),
    ]
    text = json.dumps(dict(headers), separators=(",", ":"))[:-1]
    pad = max(0, size - len(text) - 80)
    text += ',"variable_sip_h_X-Bench-Pad":"' + "p" * pad + '"'
    prefix = (text + f',"{SEQ_KEY}":"').encode()
    middle = f'","{SENT_KEY}":"'.encode()
    suffix = b'"}'
    return prefix, middle, suffix


def run_generator(args: argparse.Namespace) -> int:
    from gevent import monkey
    monkey.patch_all()
    import gevent

    from opensips_fs.sim import FsSimulator, SimSettings

    boxes = [FsSimulator(SimSettings(host="127.0.0.1", port=0, password="ClueCon", heartbeat=0)).start()
             for _ in range(args.sockets)]
    print(json.dumps({"ports": [b.port for b in boxes]}), flush=True)
    sizes = [900 + (i * 1600) // 63 for i in range(64)]          # 0.9 .. 2.5 KB
    templates = [event_body_parts(s) for s in sizes]

    def frame(seq: int) -> bytes:
        prefix, middle, suffix = templates[seq & 63]
        body = b"%s%d%s%.6f%s" % (prefix, seq, middle, time.time(), suffix)
        return b"Content-Length: %d\nContent-Type: text/event-json\n\n%s" % (len(body), body)

    def clients(box: FsSimulator) -> list[SimClient]:
        return [c for c in box.clients if c.alive and c.authed and c.events_on]

    from gevent.socket import wait_read
    while True:
        wait_read(sys.stdin.fileno())     # let the simulators run meanwhile
        line = sys.stdin.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            break
        if cmd.get("op") == "wait_clients":
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not all(clients(b) for b in boxes):
                gevent.sleep(0.05)
            print(json.dumps({"ready": all(clients(b) for b in boxes)}), flush=True)
            continue
        count, rate = cmd["count"], cmd.get("rate") or 0
        seq0 = cmd.get("seq0", 0)
        live = [clients(b)[0] for b in boxes]
        n = len(live)
        t0 = time.monotonic()
        i = 0
        while i < count:
            if rate:
                due = min(count, int((time.monotonic() - t0) * rate) + 1)
                if due <= i:
                    gevent.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                    continue
            else:
                due = min(count, i + 200)
                for c in live:
                    c.wait_below(2000)
            while i < due:
                seq = seq0 + i
                live[seq % n].enqueue_event(frame(seq))
                i += 1
            gevent.sleep(0)
        print(json.dumps({"sent": count, "elapsed": time.monotonic() - t0}), flush=True)
    for b in boxes:
        b.stop()
    return 0


# ---------------------------------------------------------------------------
# subscribers (this process)

class Counter:
    """What one subscriber received: raw reads with their arrival times,
    recorded as cheaply as possible during the run and analysed after it."""

    def __init__(self) -> None:
        self.reads: list[tuple[bytes, float]] = []          # (bytes, arrival time)
        self._counted = self._count = 0
        self.seen: set[int] = set()
        self.latencies: list[float] = []
        self.first: float | None = None
        self.last: float | None = None
        self.duplicates = 0

    def add(self, seq: int, sent: float, now: float) -> None:
        if seq in self.seen:
            self.duplicates += 1
            return
        self.seen.add(seq)
        self.latencies.append(now - sent)
        if self.first is None:
            self.first = now
        self.last = now

    def received(self) -> int:
        """Events in the reads so far (counted incrementally during the run)."""
        reads = self.reads
        for i in range(self._counted, len(reads)):
            self._count += reads[i][0].count(SEQ_MARK)
        self._counted = len(reads)
        return self._count

    def analyse(self) -> None:
        buffer = b""
        for data, now in self.reads:
            buffer += data
            stop = scan(buffer, self, now)
            buffer = buffer[stop:]
        self.reads = []


SEQ_MARK = f'{SEQ_KEY}\\":\\"'.encode()
SENT_MARK = f'{SENT_KEY}\\":\\"'.encode()


def scan(data: bytes, counter: Counter, now: float, start: int = 0) -> int:
    """Find every (seq, sent) pair in `data`; return where scanning stopped."""
    find = data.find
    pos = start
    while True:
        a = find(SEQ_MARK, pos)
        if a < 0:
            return pos
        a += len(SEQ_MARK)
        b = find(b"\\", a)
        c = find(SENT_MARK, b)
        if b < 0 or c < 0:
            return a - len(SEQ_MARK)
        c += len(SENT_MARK)
        d = find(b"\\", c)
        if d < 0:
            return a - len(SEQ_MARK)
        counter.add(int(data[a:b]), float(data[c:d]), now)
        pos = d


def _big_rcvbuf(sock: gsocket.socket) -> None:
    # SO_RCVBUFFORCE (33 on Linux, not exported by Python) lifts rmem_max for root
    for opt in (getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None),
                socket.SO_RCVBUF):
        if opt is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 128 << 20)
            return
        except OSError:
            continue


def udp_subscriber(counter: Counter) -> tuple[gsocket.socket, str, gevent.Greenlet]:
    import gevent
    from gevent import socket as gsocket
    sock = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _big_rcvbuf(sock)
    sock.bind(("127.0.0.1", 0))

    def run() -> None:
        recv = sock.recv
        append = counter.reads.append
        now = time.time
        while True:
            append((recv(65535), now()))

    return sock, f"udp:127.0.0.1:{sock.getsockname()[1]}", gevent.spawn(run)


def tcp_subscriber(counter: Counter) -> tuple[gsocket.socket, str, gevent.Greenlet]:
    import gevent
    from gevent import socket as gsocket
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve(conn: gsocket.socket) -> None:
        recv = conn.recv
        append = counter.reads.append
        now = time.time
        while True:
            data = recv(1 << 20)
            if not data:
                return
            append((data, now()))

    def run() -> None:
        while True:
            conn, _ = listener.accept()
            _big_rcvbuf(conn)
            gevent.spawn(serve, conn)

    return listener, f"tcp:127.0.0.1:{listener.getsockname()[1]}", gevent.spawn(run)


# ---------------------------------------------------------------------------
# orchestration

def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def mi(port: int, method: str, params: list | None = None) -> Any:
    import urllib.request
    body: dict[str, object] = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        body["params"] = params
    req = urllib.request.Request(f"http://127.0.0.1:{port}/mi", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        reply = json.loads(resp.read())
    if "error" in reply:
        raise RuntimeError(f"MI {method}: {reply['error']}")
    return reply["result"]


class RssSampler:
    """The peak resident set of a process, sampled every 20 ms in a greenlet."""

    def __init__(self, rig: Rig):
        import gevent
        self.rig = rig
        self.peak = 0.0
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        import gevent
        while True:
            try:
                self.peak = max(self.peak, self.rig.rss_mb())
            except OSError:
                return
            gevent.sleep(0.02)

    def reset(self) -> None:
        self.peak = self.rig.rss_mb()

    def stop(self) -> None:
        self._greenlet.kill()


class Rig:
    """The generator and opensips-fs processes for one socket count."""

    def __init__(self, sockets: int, workdir: Path, code: str | None = None, extra: tuple[str, ...] = ()):
        self.sockets = sockets
        self.gen = subprocess.Popen([PYTHON, __file__, "--generator", "--sockets", str(sockets)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.gen.stdin is not None and self.gen.stdout is not None  # PIPEs
        self.gen_in, self.gen_out = self.gen.stdin, self.gen.stdout
        ports = json.loads(self.gen_out.readline())["ports"]
        self.mi_port = free_port()
        lines = ['log_level=1', 'log_stderror=yes',
                 'loadmodule "freeswitch.so"', 'loadmodule "freeswitch_scripting.so"']
        lines += [f'modparam("freeswitch_scripting", "fs_subscribe", '
                  f'":ClueCon@127.0.0.1:{p}?CHANNEL_STATE")' for p in ports]
        lines += ['loadmodule "httpd.so"', 'modparam("httpd", "ip", "127.0.0.1")',
                  f'modparam("httpd", "port", {self.mi_port})', 'loadmodule "mi_http.so"',
                  'loadmodule "event_datagram.so"', 'loadmodule "event_stream.so"', *extra]
        cfg = workdir / f"bench_{sockets}.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        env = dict(os.environ)
        if code:
            env["PYTHONPATH"] = str(Path(code).resolve())
        self.fs = subprocess.Popen([PYTHON, "-m", "opensips_fs", "-f", str(cfg)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.fs.stderr is not None  # a PIPE
        fs_err = self.fs.stderr
        self._ask({"op": "wait_clients"})
        deadline = time.monotonic() + 20
        while True:
            try:
                mi(self.mi_port, "fs_list")
                break
            except OSError:
                if time.monotonic() > deadline or self.fs.poll() is not None:
                    why = fs_err.read() if self.fs.poll() is not None else "timeout"
                    raise RuntimeError("opensips-fs did not start: " + why)
                time.sleep(0.1)
        self.seq = 0

    def _ask(self, cmd: dict) -> Any:
        self.gen_in.write(json.dumps(cmd) + "\n")
        self.gen_in.flush()
        return json.loads(self.gen_out.readline())

    def run(self, count: int, rate: float, subscribers: list[str]) -> dict:
        """Subscribe, then have the generator emit `count` events."""
        for s in subscribers:
            mi(self.mi_port, "event_subscribe", ["E_FREESWITCH", s, 3600])
        seq0 = self.seq
        self.seq += count
        return self._ask({"count": count, "rate": rate, "seq0": seq0})

    def unsubscribe(self, subscribers: list[str]) -> None:
        for s in subscribers:
            mi(self.mi_port, "event_subscribe", ["E_FREESWITCH", s, 0])

    def cpu_seconds(self) -> float:
        """CPU time (user + system) opensips-fs has used so far."""
        fields = Path(f"/proc/{self.fs.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict:
        return mi(self.mi_port, "get_statistics", [["all"]])

    def rss_mb(self) -> float:
        """The resident set of opensips-fs now, in MB."""
        for line in Path(f"/proc/{self.fs.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        try:
            self.gen_in.write(json.dumps({"op": "quit"}) + "\n")
            self.gen_in.flush()
        except OSError:
            pass
        for proc in (self.fs, self.gen):
            proc.terminate()
        for proc in (self.fs, self.gen):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_case(rig: Rig, kind: str, rate: float, duration: float, full_count: int) -> tuple[int, dict, list[dict]]:
    import gevent
    n = 4 if kind == "4udp" else 1
    counters = [Counter() for _ in range(n)]
    made = [(tcp_subscriber if kind == "tcp" else udp_subscriber)(c) for c in counters]
    sockets = [m[1] for m in made]
    count = int(rate * duration) if rate else full_count
    sent_before = rig.stats()["evi:notifications_sent"]
    t_start = time.time()
    cpu_start = rig.cpu_seconds()
    reply = rig.run(count, rate, sockets)
    # when had opensips-fs itself written every notification? (its own counter,
    # independent of how fast this process reads them)
    relay_done = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if rig.stats()["evi:notifications_sent"] - sent_before >= count * n:
            relay_done = time.time()
            break
        gevent.sleep(0.01)
    # wait for the tail: until everything arrived or nothing moves for 1 s
    last_total, still = -1, time.monotonic()
    while True:
        total = sum(c.received() for c in counters)
        if total >= count * n:
            break
        if total != last_total:
            last_total, still = total, time.monotonic()
        elif time.monotonic() - still > 1.0:
            break
        gevent.sleep(0.05)
    cpu = rig.cpu_seconds() - cpu_start
    rig.unsubscribe(sockets)
    # expire 0 still delivers during the current second: keep the sockets
    # (and their ports) until the next one, so no case sees another's events
    gevent.sleep(1.1)
    for sock, _, greenlet in made:
        greenlet.kill()
        sock.close()
    rows = []
    for c in counters:
        c.analyse()
        received = len(c.seen)
        span = (c.last - t_start) if c.last else float("nan")
        rows.append({
            "received": received, "lost": count - received, "dups": c.duplicates,
            "rate": received / span if span and span > 0 else 0.0,
            "p50": percentile(c.latencies, 0.50) * 1000,
            "p99": percentile(c.latencies, 0.99) * 1000,
        })
    reply["cpu_us"] = cpu / count * 1e6
    reply["relay_rate"] = count / (relay_done - t_start) if relay_done else 0.0
    return count, reply, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sockets", default="1,20",
                        help="ESL socket counts to run (comma separated; default 1,20)")
    parser.add_argument("--duration", type=float, default=3.0,
                        help="seconds per fixed-rate case (default 3)")
    parser.add_argument("--full-count", type=int, default=100000,
                        help="events per full-speed case (default 100000)")
    parser.add_argument("--rates", default="0,5000,20000",
                        help="offered rates, 0 = full speed (default 0,5000,20000)")
    parser.add_argument("--kinds", default="udp,tcp,4udp")
    parser.add_argument("--quick", action="store_true", help="short runs (1 s, 30000 events)")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="idle seconds after the runs before the settled RSS (default 60)")
    parser.add_argument("--code", default=None,
                        help="run the opensips-fs of this source tree (default: this one)")
    args = parser.parse_args(argv)
    if args.generator:
        args.sockets = int(args.sockets)
        return run_generator(args)

    from gevent import monkey
    monkey.patch_all()
    if args.quick:
        args.duration, args.full_count = 1.0, 30000
    rates = [float(r) for r in args.rates.split(",")]
    kinds = args.kinds.split(",")
    print(f"relay benchmark: {os.cpu_count()} CPUs, events 0.9-2.5 KB, "
          f"{args.duration:g} s per fixed rate, {args.full_count} events at full speed")
    print("ev/s/sub: received by the slowest subscriber / time from the first send;"
          " relay ev/s: from opensips-fs' own evi:notifications_sent counter;"
          " cpu: opensips-fs CPU time per event")
    print(f"{'sockets':>7} {'subscribers':>11} {'offered':>8} {'events':>7} "
          f"{'ev/s/sub':>9} {'relay ev/s':>10} {'lost':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'cpu us/ev':>9} {'peak MB':>7}  vs OpenSIPS 4.1")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for sockets in [int(s) for s in args.sockets.split(",")]:
            rig = Rig(sockets, Path(tmp), args.code)
            sampler = None
            try:
                import gevent
                gevent.sleep(1.0)
                idle = rig.rss_mb()
                sampler = RssSampler(rig)
                run_case(rig, "udp", 0, 0, 20000)        # warm-up, not reported
                overall_peak = sampler.peak
                for kind in kinds:
                    for rate in rates:
                        sampler.reset()
                        count, reply, rows = run_case(rig, kind, rate, args.duration,
                                                      args.full_count)
                        case_peak = sampler.peak
                        overall_peak = max(overall_peak, case_peak)
                        worst = min(rows, key=lambda r: r["rate"])
                        lost = sum(r["lost"] for r in rows)
                        p50 = max(r["p50"] for r in rows)
                        p99 = max(r["p99"] for r in rows)
                        if rate:
                            gen_rate = count / reply["elapsed"] if reply.get("elapsed") else 0
                            note = (f"offered {gen_rate:,.0f} ev/s achieved by the generator")
                            if rate == 5000:
                                note += (f"; p50 {p50:.2f} ms vs OpenSIPS "
                                         f"{OPENSIPS_P50_MS[0]}-{OPENSIPS_P50_MS[1]} ms")
                        else:
                            ratio = worst["rate"] / OPENSIPS[kind]
                            relay_ratio = reply["relay_rate"] / OPENSIPS[kind]
                            note = (f"{ratio:.2f}x (relay {relay_ratio:.2f}x) OpenSIPS "
                                    f"({OPENSIPS[kind]:,} ev/s/sub); target 3x = {3 * OPENSIPS[kind]:,}")
                        label = {"udp": "1 UDP", "tcp": "1 TCP", "4udp": "4 UDP"}[kind]
                        offered = f"{rate:,.0f}" if rate else "full"
                        print(f"{sockets:>7} {label:>11} {offered:>8} {count:>7} "
                              f"{worst['rate']:>9,.0f} {reply['relay_rate']:>10,.0f} {lost:>6} "
                              f"{p50:>7.2f} {p99:>7.2f} "
                              f"{reply['cpu_us']:>9.1f} {case_peak:>7.0f}  {note}",
                              flush=True)
                        results.append({"sockets": sockets, "kind": kind, "rate": rate,
                                        "count": count, "rows": rows})
                stats = rig.stats()
                print(f"        opensips-fs statistics after {sockets}-socket runs: "
                      + ", ".join(f"{k}={v}" for k, v in stats.items()), flush=True)
                sampler.stop()
                gevent.sleep(args.settle)
                settled = rig.rss_mb()
                print(f"        RSS of opensips-fs with {sockets} socket(s): idle {idle:.0f} MB, "
                      f"peak {overall_peak:.0f} MB during the runs (target <= 150), "
                      f"{settled:.0f} MB {args.settle:g} s after them = {settled / idle:.2f}x idle "
                      f"(target <= 1.5x)", flush=True)
            finally:
                if sampler is not None:
                    sampler.stop()
                rig.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

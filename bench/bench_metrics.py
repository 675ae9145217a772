"""What Prometheus scrapes cost the relay: the relay ceiling with and without
1,000 scrapes of `/metrics` a minute, in the same run.

    .venv/bin/python bench/bench_metrics.py [--sockets 1] [--rounds 3] [--max-age MS]
                                            [--full-count N] [--scrapes-per-minute N]

The rig is bench_relay.py's (a generator process with simulator boxes,
`opensips-fs` subscribed to CHANNEL_STATE on each socket, one UDP
subscriber in this process); each case sends `--full-count` events at full
speed and measures the relay rate from opensips-fs' own
`evi:notifications_sent` counter. Cases alternate without and with a
scraper process that fetches `/metrics` on a keep-alive connection
`--scrapes-per-minute` times a minute (default 1,000), `--rounds` times
each, so both see the same machine. `--max-age` sets the service's
`metrics_max_age` (default: its default, 1000 ms; 0 renders every scrape). It prints each case, the median of
each side and their ratio, and the scrapes' size and latency; and, with no
events flowing, the share of a core opensips-fs uses for 5 s without and
5 s with the scraper.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_relay import Rig, run_case


def run_scraper(port: int, interval: float) -> int:
    """Scrape until stdin closes; print scrapes, bytes, p50/p99 ms at the end."""
    import threading
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()
    threading.Thread(target=wait_for_eof, daemon=True).start()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    took, size = [], 0
    next_at = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        conn.request("GET", "/metrics")
        reply = conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise SystemExit(f"/metrics answered {reply.status}")
        took.append(time.monotonic() - started)
        size = len(body)
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))
    took.sort()
    p50 = took[len(took) // 2] * 1000 if took else 0.0
    p99 = took[min(len(took) - 1, int(len(took) * 0.99))] * 1000 if took else 0.0
    print(f"{len(took)} {size} {p50:.2f} {p99:.2f}", flush=True)
    return 0


def idle_core_share(rig: Rig, per_minute: float | None, seconds: float = 5.0) -> float:
    """The share of a core opensips-fs uses over `seconds` with no events,
    scraped `per_minute` times a minute (None: not scraped)."""
    import gevent
    scraper = Scraper(rig.mi_port, per_minute) if per_minute else None
    before = rig.cpu_seconds()
    gevent.sleep(seconds)
    used = rig.cpu_seconds() - before
    if scraper is not None:
        scraper.stop()
    return used / seconds


class Scraper:
    """The scraper as a separate process (its CPU is not this process's)."""

    def __init__(self, port: int, per_minute: float):
        self.proc = subprocess.Popen([sys.executable, __file__, "--scraper", str(port),
                                      "--scrapes-per-minute", str(per_minute)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.started = time.monotonic()

    def stop(self) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None  # PIPEs
        self.proc.stdin.close()
        scrapes, size, p50, p99 = self.proc.stdout.readline().split()
        self.proc.wait(10)
        return {"scrapes": int(scrapes), "bytes": int(size), "p50": float(p50), "p99": float(p99),
                "per_minute": int(scrapes) / (time.monotonic() - self.started) * 60}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scraper", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sockets", default="1", help="ESL socket counts, comma separated (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="cases per side and socket count (default 3)")
    parser.add_argument("--full-count", type=int, default=100000, help="events per case (default 100000)")
    parser.add_argument("--scrapes-per-minute", type=float, default=1000.0)
    parser.add_argument("--max-age", type=int, default=None,
                        help="the service's metrics_max_age in ms (default: its default)")
    args = parser.parse_args(argv)
    if args.scraper is not None:
        return run_scraper(args.scraper, 60.0 / args.scrapes_per_minute)

    from gevent import monkey
    monkey.patch_all()
    import gevent

    age = "default" if args.max_age is None else f"{args.max_age} ms"
    print(f"metrics cost on the relay: {args.full_count:,} events per case to 1 UDP subscriber at full speed, "
          f"{args.rounds} rounds, with and without {args.scrapes_per_minute:,.0f} scrapes/min of /metrics "
          f"(metrics_max_age {age})")
    print(f"{'sockets':>7} {'scrapes':>8} {'relay ev/s':>10} {'recv ev/s':>10} {'lost':>5} {'cpu us/ev':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for sockets in [int(s) for s in args.sockets.split(",")]:
            extra = () if args.max_age is None else (f'modparam("httpd", "metrics_max_age", {args.max_age})',)
            rig = Rig(sockets, Path(tmp), extra=extra)
            try:
                gevent.sleep(1.0)
                run_case(rig, "udp", 0, 0, 20000)        # warm-up, not reported
                quiet = idle_core_share(rig, None)
                scraped = idle_core_share(rig, args.scrapes_per_minute)
                print(f"        {sockets} socket(s), no events: opensips-fs uses {quiet:.1%} of a core, "
                      f"{scraped:.1%} while scraped {args.scrapes_per_minute:,.0f} times a minute", flush=True)
                relay: dict[bool, list[float]] = {False: [], True: []}
                received: dict[bool, list[float]] = {False: [], True: []}
                cpu_us: dict[bool, list[float]] = {False: [], True: []}
                scrapes = []
                for _ in range(args.rounds):
                    for scraping in (False, True):
                        scraper = Scraper(rig.mi_port, args.scrapes_per_minute) if scraping else None
                        if scraper is not None:
                            gevent.sleep(0.5)             # the scrapes are going when the events start
                        count, reply, rows = run_case(rig, "udp", 0, 0, args.full_count)
                        if scraper is not None:
                            scrapes.append(scraper.stop())
                        row = rows[0]
                        relay[scraping].append(reply["relay_rate"])
                        received[scraping].append(row["rate"])
                        cpu_us[scraping].append(reply["cpu_us"])
                        label = f"{scrapes[-1]['per_minute']:,.0f}/min" if scraping else "none"
                        print(f"{sockets:>7} {label:>8} {reply['relay_rate']:>10,.0f} {row['rate']:>10,.0f} "
                              f"{row['lost']:>5} {reply['cpu_us']:>9.1f}", flush=True)
                last = scrapes[-1]
                for what, figures, unit in (("relay", relay, "ev/s"), ("received", received, "ev/s"),
                                            ("CPU per event", cpu_us, "us")):
                    without, with_ = statistics.median(figures[False]), statistics.median(figures[True])
                    ratio = f"{with_ / without:.3f}x" if without else "n/a (events were lost: see lost)"
                    print(f"        {sockets} socket(s): median {what} {without:,.1f} {unit} without scrapes, "
                          f"{with_:,.1f} {unit} with them = {ratio}", flush=True)
                print(f"        /metrics page {last['bytes']:,} bytes, scrape p50 {last['p50']:.2f} ms, "
                      f"p99 {last['p99']:.2f} ms (during the runs)", flush=True)
            finally:
                rig.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

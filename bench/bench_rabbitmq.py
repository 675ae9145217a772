"""RabbitMQ relay benchmark: FreeSWITCH events -> opensips-fs -> one RabbitMQ
destination (publisher confirms on) and one UDP subscriber, in the same run.

    .venv/bin/python bench/bench_rabbitmq.py [--quick] [--rate 5000] [--duration 20]

Processes, all on 127.0.0.1: a private RabbitMQ broker
(opensips_fs.tools.rabbitmq_broker), the event generator of bench_relay.py
(the simulator, CHANNEL_STATE events of 0.9-2.5 KB carrying their sequence
number and send time), `opensips-fs` with `event_rabbitmq` and
`event_datagram` loaded, this process (the UDP subscriber) and an AMQP
consumer process (pika, acking every 100 messages, reconnecting) of the durable
queue of the `rabbitmq:…/persistent?bench` subscriber.

Cases:
* full speed: events/s each subscriber got, p50/p99 latency;
* a fixed offered rate (default 5,000 ev/s): p50/p99;
* the same rate with the broker stopped and started again in the middle
  (a graceful stop, ~2 s, and a start, 6-9 s): events lost (must be 0) and
  duplicates (at-least-once re-publishes of unconfirmed messages), for
  RabbitMQ and for the UDP subscriber beside it (which must not notice).

OpenSIPS 4.1's event_rabbitmq loses every event raised while the broker is
down (recorded: 5 of 5); it has no confirms, so it cannot know.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_relay as relay  # noqa: E402  (the generator and the UDP subscriber)

QUEUE = "bench"


def run_consumer(port: int) -> int:
    """The AMQP consumer process: consume QUEUE (acking every 100 messages,
    reconnecting when the broker goes away); on stdin `count` prints the
    events received so far, `stop` prints the analysis as JSON and exits."""
    from gevent import monkey
    monkey.patch_all()
    import gevent
    import pika
    from gevent.socket import wait_read

    counter = relay.Counter()
    state = {"redelivered": 0, "reconnects": 0, "consuming": False, "stop": False}

    def consume() -> None:
        while not state["stop"]:
            try:
                conn = pika.BlockingConnection(pika.ConnectionParameters(
                    "127.0.0.1", port, heartbeat=0, connection_attempts=1))
                channel = conn.channel()
                channel.queue_declare(QUEUE, durable=True)
                channel.basic_qos(prefetch_count=2000)
                append = counter.reads.append
                now = time.time
                unacked = [0]

                def on_message(ch: pika.adapters.blocking_connection.BlockingChannel, method: pika.spec.Basic.Deliver,
                               properties: pika.spec.BasicProperties, body: bytes) -> None:
                    append((body, now()))
                    if method.redelivered:
                        state["redelivered"] += 1
                    unacked[0] = method.delivery_tag
                    if method.delivery_tag % 100 == 0:
                        ch.basic_ack(method.delivery_tag, multiple=True)
                        unacked[0] = 0

                channel.basic_consume(QUEUE, on_message)
                state["consuming"] = True
                while not state["stop"]:
                    conn.process_data_events(time_limit=0.05)
                    if unacked[0]:
                        channel.basic_ack(unacked[0], multiple=True)
                        unacked[0] = 0
                conn.close()
            except Exception:   # the broker restarts: connect again
                state["consuming"] = False
                state["reconnects"] += 1
                gevent.sleep(0.2)

    worker = gevent.spawn(consume)
    while True:
        wait_read(sys.stdin.fileno())
        line = sys.stdin.readline().strip()
        if line == "ready":
            while not state["consuming"]:
                gevent.sleep(0.05)
            print(json.dumps({"ready": True}), flush=True)
        elif line == "count":
            print(json.dumps({"count": counter.received()}), flush=True)
        else:
            break
    state["stop"] = True
    worker.join(5)
    counter.analyse()
    print(json.dumps({"seen": len(counter.seen), "dups": counter.duplicates,
                      "latencies": counter.latencies, "last": counter.last,
                      "redelivered": state["redelivered"]}), flush=True)
    return 0


class Consumer:
    """The consumer process, seen from here."""

    def __init__(self, port: int):
        self.proc = subprocess.Popen([relay.PYTHON, __file__, "--consumer", str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.into, self.out = self.proc.stdin, self.proc.stdout
        self.ask("ready")

    def ask(self, what: str) -> dict:
        self.into.write(what + "\n")
        self.into.flush()
        return json.loads(self.out.readline())

    def received(self) -> int:
        return self.ask("count")["count"]

    def stop(self) -> dict:
        result = self.ask("stop")
        self.proc.wait(10)
        return result


class Rig:
    """Broker, generator and opensips-fs."""

    def __init__(self, workdir: Path, queue_size: int):
        from opensips_fs.tools.rabbitmq_broker import Broker
        self.broker = Broker.start(workdir / "broker")
        self.gen = subprocess.Popen([relay.PYTHON, relay.__file__, "--generator", "--sockets", "1"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.gen.stdin is not None and self.gen.stdout is not None
        self.gen_in, self.gen_out = self.gen.stdin, self.gen.stdout
        port = json.loads(self.gen_out.readline())["ports"][0]
        self.mi_port = relay.free_port()
        lines = ['log_level=1', 'log_stderror=yes',
                 'loadmodule "freeswitch.so"', 'loadmodule "freeswitch_scripting.so"',
                 f'modparam("freeswitch_scripting", "fs_subscribe", '
                 f'":ClueCon@127.0.0.1:{port}?CHANNEL_STATE")',
                 'loadmodule "httpd.so"', 'modparam("httpd", "ip", "127.0.0.1")',
                 f'modparam("httpd", "port", {self.mi_port})', 'loadmodule "mi_http.so"',
                 'loadmodule "event_datagram.so"', 'loadmodule "event_rabbitmq.so"',
                 f'modparam("event_rabbitmq", "queue_size", {queue_size})',
                 'modparam("event_rabbitmq", "heartbeat", 5)']
        cfg = workdir / "bench_rabbitmq.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        self.fs = subprocess.Popen([str(Path(relay.PYTHON).with_name("opensips-fs")), "-f", str(cfg)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._ask({"op": "wait_clients"})
        deadline = time.monotonic() + 20
        while True:
            try:
                relay.mi(self.mi_port, "fs_list")
                break
            except OSError:
                if time.monotonic() > deadline or self.fs.poll() is not None:
                    raise RuntimeError("opensips-fs did not start")
                time.sleep(0.1)
        self.seq = 0

    def _ask(self, cmd: dict) -> Any:
        self.gen_in.write(json.dumps(cmd) + "\n")
        self.gen_in.flush()
        return json.loads(self.gen_out.readline())

    def emit(self, count: int, rate: float) -> dict:
        seq0, self.seq = self.seq, self.seq + count
        return self._ask({"count": count, "rate": rate, "seq0": seq0})

    def status(self) -> list[dict]:
        return relay.mi(self.mi_port, "evi_status")["Destinations"]

    def close(self) -> None:
        try:
            self._ask({"op": "quit"})
        except Exception:
            pass
        for proc in (self.fs, self.gen):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.broker.close()


def run_case(rig: Rig, label: str, count: int, rate: float, restart_at: float | None) -> dict:
    import gevent
    udp_counter = relay.Counter()
    udp_sock, udp_socket, udp_greenlet = relay.udp_subscriber(udp_counter)
    rmq = Consumer(rig.broker.port)
    rmq_socket = f"rabbitmq:127.0.0.1:{rig.broker.port}/persistent?{QUEUE}"
    for socket in (udp_socket, rmq_socket):
        relay.mi(rig.mi_port, "event_subscribe", ["E_FREESWITCH", socket, 3600])
    t_start = time.time()
    emitting = gevent.spawn(rig.emit, count, rate)
    outage = None
    if restart_at is not None:
        gevent.sleep(restart_at)
        t0 = time.monotonic()
        rig.broker.stop()
        rig.broker.up()
        outage = time.monotonic() - t0
    emitting.join()
    # wait until both got everything (duplicates count here, so also until
    # nothing moved for 1 s), or nothing moved for 5 s
    last, still = -1, time.monotonic()
    while True:
        got = rmq.received()
        total = udp_counter.received() + got
        if total != last:
            last, still = total, time.monotonic()
        quiet = time.monotonic() - still
        if udp_counter.received() >= count and got >= count and quiet > 1.0:
            break
        if quiet > 5.0:
            break
        gevent.sleep(0.05)
    status = [d for d in rig.status() if d["transport"] == "rabbitmq"][0]
    for socket in (udp_socket, rmq_socket):
        relay.mi(rig.mi_port, "event_subscribe", ["E_FREESWITCH", socket, 0])
    gevent.sleep(1.1)
    consumed = rmq.stop()
    udp_greenlet.kill()
    udp_sock.close()
    udp_counter.analyse()
    results = {"RabbitMQ": (consumed["seen"], consumed["dups"], consumed["latencies"], consumed["last"]),
               "UDP": (len(udp_counter.seen), udp_counter.duplicates, udp_counter.latencies,
                       udp_counter.last)}
    rows = {}
    for name, (received, dups, latencies, last) in results.items():
        span = (last - t_start) if last else float("nan")
        rows[name] = {"received": received, "lost": count - received, "dups": dups,
                      "rate": received / span if span and span > 0 else 0.0,
                      "p50": relay.percentile(latencies, 0.5) * 1000,
                      "p99": relay.percentile(latencies, 0.99) * 1000}
    for name, row in rows.items():
        extra = ""
        if name == "RabbitMQ":
            extra = (f"  confirmed {status['sent']:,} in all, re-published {status['retried']:,}, "
                     f"send errors {status['send_errors']}, redelivered to the consumer "
                     f"{consumed['redelivered']}")
            if outage is not None:
                extra += f"; broker down and back in {outage:.1f} s"
        print(f"{label:>22} {name:>9} {count:>7,} {row['rate']:>9,.0f} {row['lost']:>6} "
              f"{row['dups']:>6} {row['p50']:>8.2f} {row['p99']:>9.2f}{extra}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="offered ev/s (default 5000)")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds of the restart case (default 20; the broker "
                             "restarts after 3 s and needs ~10 s)")
    parser.add_argument("--full-count", type=int, default=50000,
                        help="events of the full-speed case (default 50000)")
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--consumer", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.consumer:
        return run_consumer(args.consumer)
    from gevent import monkey
    monkey.patch_all()
    if args.quick:
        args.full_count = 20000
    print(f"RabbitMQ relay benchmark: {os.cpu_count()} CPUs, events 0.9-2.5 KB, one "
          "rabbitmq: subscriber (persistent, durable queue, publisher confirms) and one "
          "UDP subscriber in the same run")
    print(f"{'case':>22} {'to':>9} {'events':>7} {'ev/s':>9} {'lost':>6} {'dups':>6} "
          f"{'p50 ms':>8} {'p99 ms':>9}")
    count = int(args.rate * args.duration)
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp), queue_size=max(100000, 2 * count))
        try:
            run_case(rig, "warm-up (not counted)", 2000, 0, None)
            run_case(rig, "full speed", args.full_count, 0, None)
            run_case(rig, f"{args.rate:,.0f} ev/s", int(args.rate * 5), args.rate, None)
            run_case(rig, f"{args.rate:,.0f} ev/s + restart", count, args.rate, 3.0)
        finally:
            rig.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

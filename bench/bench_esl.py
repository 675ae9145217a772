"""freeswitch_esl and fs_reload benchmark.

    .venv/bin/python bench/bench_esl.py [--calls 400] [--latency-ms 20] [--sockets 1,10] [--rows 2000]

1. freeswitch_esl: the real service (`opensips-fs -f <generated config>`, a
   subprocess) runs `api echo N` on 1 and on 10 simulated FreeSWITCH servers
   whose replies each take `--latency-ms` (as a slow `api` does). Clients
   send the MI calls over HTTP, 32 at a time. OpenSIPS' connection manager
   runs ESL commands one at a time and blocks on each reply (docs/protocols/scripting.md §7.1), so
   whatever the number of servers it cannot exceed 1000 / latency calls/s;
   FreeSWITCH itself answers one command at a time per connection, so the
   best possible is sockets * 1000 / latency. Prints calls/s and the ratio to
   both bounds.
2. fs_reload: `--rows` rows (two events each, 10 sockets) in the embedded
   SQLite table; prints the time of a full reload (read, validate, swap) and
   of a second, identical one (no wire change).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
from gevent import socket  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from opensips_fs.sim import FsSimulator, SimSettings  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EVENTS = ["CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_HANGUP", "CHANNEL_DESTROY", "DTMF",
          "TALK", "NOTALK", "BACKGROUND_JOB", "HEARTBEAT", "CHANNEL_STATE", "CHANNEL_BRIDGE"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mi(port: int, method: str, params: list | None = None) -> dict:
    body = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        body["params"] = params
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /mi HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(data), data))
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return json.loads(reply.partition(b"\r\n\r\n")[2])


def start_service(workdir: Path, db: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = workdir / "bench-esl.cfg"
    config.write_text(
        "log_level=1\nlog_stderror=yes\n"
        'loadmodule "freeswitch.so"\n'
        'loadmodule "freeswitch_scripting.so"\n'
        f'modparam("freeswitch_scripting", "db_url", "sqlite://{db}")\n'
        'loadmodule "httpd.so"\n'
        'modparam("httpd", "ip", "127.0.0.1")\n'
        f'modparam("httpd", "port", {port})\n'
        'loadmodule "mi_http.so"\n')
    proc = subprocess.Popen([sys.executable, "-m", "opensips_fs", "-f", str(config)], cwd=REPO,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            mi(port, "fs_list")
            return proc, port
        except OSError:
            gevent.sleep(0.1)
    proc.kill()
    raise SystemExit("opensips-fs did not start")


def bench_esl(port: int, boxes: list[FsSimulator], calls: int, latency_ms: float) -> float:
    urls = [f":ClueCon@127.0.0.1:{box.port}" for box in boxes]
    for u in urls:  # connect and log in first
        assert mi(port, "freeswitch_esl", ["api echo warm", u])["result"] == "warm"
    for box in boxes:
        box.delay(latency_ms)
    pool = gevent.pool.Pool(32)

    def one(n: int) -> None:
        reply = mi(port, "freeswitch_esl", [f"api echo {n}", urls[n % len(urls)]])
        assert reply.get("result") == str(n), reply

    start = time.perf_counter()
    for n in range(calls):
        pool.spawn(one, n)
    pool.join(raise_error=True)
    elapsed = time.perf_counter() - start
    for box in boxes:
        box.delay(0)
    return calls / elapsed


def fill_db(db: Path, rows: int, boxes: list[FsSimulator]) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM freeswitch")
        conn.executemany(
            "INSERT INTO freeswitch (username, password, ip, port, events_csv) VALUES (?,?,?,?,?)",
            [(None, "ClueCon", "127.0.0.1", boxes[n % len(boxes)].port,
              f"{EVENTS[n % len(EVENTS)]},{EVENTS[(n // len(EVENTS)) % len(EVENTS)]}")
             for n in range(rows)])
    conn.close()


def timed(port: int, method: str) -> float:
    start = time.perf_counter()
    reply = mi(port, method)
    assert reply.get("result") == "OK", reply
    return (time.perf_counter() - start) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--sockets", default="1,10")
    ap.add_argument("--rows", type=int, default=2000)
    args = ap.parse_args()
    counts = [int(x) for x in args.sockets.split(",")]
    boxes = [FsSimulator(SimSettings(password="ClueCon")).start() for _ in range(max(counts))]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "fs.sqlite"
        proc, port = start_service(Path(tmp), db)
        try:
            serial = 1000.0 / args.latency_ms
            print(f"freeswitch_esl, {args.calls} calls, api latency {args.latency_ms:g} ms, "
                  f"32 clients in flight")
            for count in counts:
                rate = bench_esl(port, boxes[:count], args.calls, args.latency_ms)
                best = count * serial
                print(f"  {count:3d} socket(s): {rate:8.1f} calls/s   "
                      f"x{rate / serial:5.1f} OpenSIPS' serial bound ({serial:.0f}/s)   "
                      f"{100 * rate / best:5.1f} % of the per-connection bound ({best:.0f}/s)")
            fill_db(db, args.rows, boxes)
            first = timed(port, "fs_reload")
            second = timed(port, "fs_reload")
            listed = len(mi(port, "fs_list")["result"]["Sockets"])
            print(f"fs_reload, {args.rows} rows on {len(boxes)} sockets: first {first:.1f} ms, "
                  f"identical second {second:.1f} ms ({listed} entries listed)")
        finally:
            proc.terminate()
            proc.wait(10)
            for box in boxes:
                box.stop()


if __name__ == "__main__":
    main()

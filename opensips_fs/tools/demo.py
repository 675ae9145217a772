"""``make demo``: watch FreeSWITCH events flow through opensips-fs.

    python -m opensips_fs.tools.demo [--config etc/demo.cfg] [--calls-per-second 2]
                                     [--evi udp:127.0.0.1:19500] [--verbose]

Starts three processes, all on 127.0.0.1, and stops them all on Ctrl-C:

1. ``opensips-fs-sim``, a FreeSWITCH ESL stand-in making synthetic calls, at
   the address of the config's first ``fs_subscribe`` URL;
2. ``opensips-fs -f <config>``, which subscribes to the simulator's call
   events at start-up (the fs_subscribe modparam);
3. ``opensips_fs.tools.evi_print``, which subscribes a UDP socket to
   E_FREESWITCH through MI and prints every event it receives.

Ctrl-C (or SIGTERM) stops them in reverse order — printer, service,
simulator — each with SIGTERM, then SIGKILL after a grace period; exit 0.
If one of them dies on its own, the others are stopped and the exit is 1.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from .. import config as cfgmod
from .. import url as fsurl

GRACE = 5.0      # s each process gets to stop after SIGTERM
POLL = 0.2       # s between looks at the children


def _wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


Step = tuple[str, list[str], "tuple[str, int] | None"]


def plan(config_path: str, calls_per_second: float, evi: str, verbose: bool) -> list[Step]:
    """The (name, argv, address it listens on or None) of each process, in
    start order, from the demo config."""
    cfg = cfgmod.load(config_path)
    if cfg.freeswitch_scripting is None or not cfg.freeswitch_scripting.fs_subscribe:
        raise SystemExit(f"{config_path}: the demo needs an fs_subscribe modparam")
    httpd = cfg.httpd
    if cfg.mi_http is None or httpd is None:
        raise SystemExit(f"{config_path}: the demo needs httpd + mi_http (evi_print uses MI)")
    target = fsurl.parse(cfg.freeswitch_scripting.fs_subscribe[0].url)
    if target.password is None:
        raise SystemExit(f"{config_path}: the demo's fs_subscribe URL needs a password")
    mi_url = f"http://{httpd.ip}:{httpd.port}/{cfg.mi_http.root.strip('/')}"
    python = sys.executable
    return [
        ("simulator", [python, "-c", "import sys; from opensips_fs.sim.cli import main; "
                                     "sys.exit(main())",
                       "--listen", f"{target.host}:{target.port}",
                       "--password", target.password,
                       "--calls-per-second", str(calls_per_second)],
         (target.host, target.port)),
        ("opensips-fs", [python, "-m", "opensips_fs", "-f", config_path,
                         "-l", "info" if verbose else "notice"],
         (httpd.ip, httpd.port)),
        ("evi_print", [python, "-m", "opensips_fs.tools.evi_print", evi, "--mi", mi_url],
         None),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opensips-fs demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join("etc", "demo.cfg"),
                        help="opensips-fs config with an fs_subscribe to the simulator "
                             "(default %(default)s)")
    parser.add_argument("--calls-per-second", type=float, default=2.0,
                        help="synthetic calls the simulator starts per second (default %(default)s)")
    parser.add_argument("--evi", default="udp:127.0.0.1:19500",
                        help="where evi_print receives events (default %(default)s)")
    parser.add_argument("--verbose", action="store_true", help="opensips-fs logs at info level")
    args = parser.parse_args(argv)
    try:
        steps = plan(args.config, args.calls_per_second, args.evi, args.verbose)
    except cfgmod.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1

    stop = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.append(True))

    running: list[tuple[str, subprocess.Popen]] = []
    status = 0
    try:
        for name, argv_, ready in steps:
            # own session: Ctrl-C reaches only the demo, which stops them in order
            proc = subprocess.Popen(argv_, start_new_session=True)
            running.append((name, proc))
            if ready and not _wait_port(*ready, proc, timeout=15.0):
                print(f"demo: {name} did not come up on {ready[0]}:{ready[1]}", file=sys.stderr)
                return 1
        print("demo: running; Ctrl-C stops everything", file=sys.stderr, flush=True)
        while not stop:
            for name, proc in running:
                if proc.poll() is not None:
                    print(f"demo: {name} exited ({proc.returncode}); stopping the others",
                          file=sys.stderr)
                    status = 1
                    stop.append(True)
                    break
            else:
                time.sleep(POLL)
    finally:
        for name, proc in reversed(running):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(GRACE)
                except subprocess.TimeoutExpired:
                    print(f"demo: {name} did not stop in {GRACE:.0f} s, killing it",
                          file=sys.stderr)
                    proc.kill()
                    proc.wait()
                    status = 1
    print("demo: stopped", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())

"""``opensips-fs-sim``: run one or more simulated FreeSWITCH Event Sockets
from the command line (for demos, manual tests and benchmarks)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .settings import SimSettings, SimUser


class _UserAction(argparse.Action):
    """``--user`` starts a user; ``--user-events``/``--user-api``/``--user-no-log``
    apply to the last ``--user`` given before them."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        users = getattr(namespace, "users", None) or []
        if option_string == "--user":
            name, sep, password = values.rpartition(":")
            if not sep or not name:
                parser.error("--user wants USER@DOMAIN:PASS, got %r" % values)
            users.append({"name": name, "password": password})
        else:
            if not users or option_string is None:
                parser.error("%s must follow a --user" % option_string)
            key = {"--user-events": "events", "--user-api": "api", "--user-no-log": "log"}[option_string]
            users[-1][key] = False if key == "log" else values
        namespace.users = users


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="opensips-fs-sim",
        description="A FreeSWITCH Event Socket (mod_event_socket, inbound) simulator: "
                    "byte-exact replies, events in json/plain/xml, simulated calls, "
                    "load generation and fault injection.",
        epilog="Control socket: one JSON object per line, e.g. "
               '{"op":"burst","count":100000}, {"op":"event","headers":{"Event-Name":"DTMF"}}, '
               '{"op":"push","body":{...}}, {"op":"raw","data":"..."}, {"op":"drop"}, '
               '{"op":"stall","seconds":S}, {"op":"restart"}, {"op":"refuse","on":true}, '
               '{"op":"stall","seconds":S,"conn":N}, {"op":"delay","ms":M}, '
               '{"op":"password","password":P}, {"op":"state"}, {"op":"rate","per_second":M}, '
               '{"op":"api","command":"originate loopback/9664 &park"}, '
               '{"op":"log","level":"NOTICE","text":"..."}, {"op":"shutdown"}; '
               'add "listen":"HOST:PORT" to aim at one box. '
               "SIGTERM/SIGINT send every client the shutdown notice and exit.")
    p.add_argument("--listen", action="append", type=_hostport, metavar="HOST:PORT",
                   help="address of one simulated FreeSWITCH box (repeatable: each has its own "
                        "Core-UUID and event sequence; port 0 = ephemeral, printed at start-up). "
                        "Default 127.0.0.1:8021")
    p.add_argument("--password", default="ClueCon", help="auth password (default ClueCon)")
    p.add_argument("--no-password", action="store_true",
                   help="refuse every 'auth' (only userauth users can log in)")
    p.add_argument("--userauth-without-domain", action="store_true",
                   help="also accept 'userauth USER:PASS' without @domain (the OpenSIPS recordings' stand-ins did)")
    p.add_argument("--user", action=_UserAction, metavar="USER@DOMAIN:PASS", dest="users",
                   help="a directory user for userauth (repeatable)")
    p.add_argument("--user-events", action=_UserAction, metavar='"NAME NAME…"', dest="users",
                   help="esl-allowed-events of the preceding --user (words after CUSTOM are subclasses)")
    p.add_argument("--user-api", action=_UserAction, metavar='"cmd,cmd…"', dest="users",
                   help="esl-allowed-api of the preceding --user")
    p.add_argument("--user-no-log", action=_UserAction, nargs=0, dest="users",
                   help="esl-allowed-log=false for the preceding --user")
    p.add_argument("--heartbeat", "--heartbeat-interval", type=float, default=20.0, metavar="SECONDS",
                   help="HEARTBEAT (+RE_SCHEDULE) interval, 0 = none (default 20, like FreeSWITCH)")
    p.add_argument("--hostname", action="append", metavar="NAME",
                   help="FreeSWITCH-Hostname of the events (repeatable: the n-th goes to the n-th --listen; "
                        "boxes without one get the last name plus -N; default vm)")
    p.add_argument("--core-uuid", action="append", metavar="UUID",
                   help="fixed Core-UUID (repeatable like --hostname; default: random per box and run)")
    p.add_argument("--ipv4", default="127.0.0.1", help="FreeSWITCH-IPv4 header (default 127.0.0.1)")
    p.add_argument("--ipv6", default="::1", help="FreeSWITCH-IPv6 header (default ::1)")
    p.add_argument("--fs-version", default="1.11.3-dev", choices=("1.11.3-dev", "1.10.12-release"),
                   help="how the box names itself in api version/status and HEARTBEAT (default 1.11.3-dev, "
                        "the recorded FreeSWITCH; 1.10.12-release = the OpenSIPS recordings' stand-ins)")
    p.add_argument("--idle-cpu", type=float, default=None, metavar="PERCENT",
                   help="fixed Idle-CPU figure (default: measured from this process)")
    p.add_argument("--seed", type=int, default=None, help="seed for every generated uuid (deterministic runs)")
    p.add_argument("--control", type=_hostport, metavar="HOST:PORT",
                   help="open the JSON-lines control socket there")
    p.add_argument("--calls-per-second", type=float, default=0.0, metavar="N",
                   help="run N synthetic two-leg calls per second (each the real CHANNEL_* sequence)")
    p.add_argument("--call-duration", type=float, default=1.0, metavar="SECONDS",
                   help="how long each synthetic call stays up (default 1)")
    p.add_argument("--events-per-second", type=float, default=0.0, metavar="M",
                   help="fire M events per second to the subscribers (no back-pressure: a slow reader "
                        "loses events and gets killed, as with FreeSWITCH)")
    p.add_argument("--event-name", default="CUSTOM", help="event of --events-per-second (default CUSTOM)")
    p.add_argument("--event-subclass", default="sim::load",
                   help="subclass of those CUSTOM events (default sim::load)")
    p.add_argument("--event-size", type=int, default=0, metavar="BYTES",
                   help="extra header payload per generated event (e.g. 2000 for ~2.6 KB events)")
    p.add_argument("--event-body-size", type=int, default=0, metavar="BYTES",
                   help="body (_body) size of generated events (e.g. 300000 for 300 KB events)")
    p.add_argument("--max-sessions", type=int, default=1000, help="Max-Sessions (default 1000)")
    p.add_argument("--queue-size", type=int, default=100000,
                   help="per-connection event queue (default 100000, like FreeSWITCH)")
    p.add_argument("--max-lost", type=int, default=500,
                   help="consecutive lost events tolerated before the slow-consumer kill (default 500)")
    p.add_argument("--acl", action="append", metavar="CIDR",
                   help="accept clients only from these networks (repeatable); others get "
                        "text/rude-rejection, like FreeSWITCH's apply-inbound-acl")
    p.add_argument("--auth-timeout", type=float, default=25.0,
                   help="seconds a new connection has to authenticate (default 25)")
    p.add_argument("--record-limit", type=int, default=1024 * 1024, metavar="BYTES",
                   help="bytes kept per connection and direction for the state op (default 1 MiB)")
    p.add_argument("--keep-closed", type=int, default=100, metavar="N",
                   help="closed connections kept for the state op (default 100)")
    p.add_argument("-v", "--verbose", action="store_true", help="log connections and faults to stderr")
    return p


def box_settings(args: argparse.Namespace, index: int, users: list[SimUser],
                 on_shutdown: Callable | None = None) -> SimSettings:
    """The ``SimSettings`` of the ``index``-th ``--listen`` box."""
    host, port = (args.listen or [("127.0.0.1", 8021)])[index]
    hostnames = args.hostname or ["vm"]
    core_uuids = args.core_uuid or []
    return SimSettings(
        host=host, port=port, password=None if args.no_password else args.password,
        heartbeat=args.heartbeat, userauth_requires_domain=not args.userauth_without_domain,
        users=users,
        hostname=hostnames[index] if index < len(hostnames) else "%s-%d" % (hostnames[-1], index + 1),
        core_uuid=core_uuids[index] if index < len(core_uuids) else None,
        seed=None if args.seed is None else args.seed + index,
        queue_size=args.queue_size, max_lost=args.max_lost, ipv4=args.ipv4,
        ipv6=args.ipv6, max_sessions=args.max_sessions, auth_timeout=args.auth_timeout,
        record_limit=args.record_limit, calls_per_second=args.calls_per_second,
        call_duration=args.call_duration, acl=args.acl,
        version=args.fs_version, idle_cpu=args.idle_cpu, keep_closed=args.keep_closed,
        on_shutdown=on_shutdown)


def main(argv: Sequence[str] | None = None) -> int:
    from gevent import monkey

    monkey.patch_all()
    import gevent
    from gevent.event import Event as GEvent

    from .control import ControlServer
    from .server import FsSimulator

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s opensips-fs-sim %(message)s", stream=sys.stderr)
    users = [SimUser(u["name"], u["password"], u.get("events"), u.get("api"), u.get("log", True))
             for u in (args.users or [])]
    listens = args.listen or [("127.0.0.1", 8021)]
    boxes: list[FsSimulator] = []
    done = GEvent()

    def on_shutdown(_box: FsSimulator) -> None:
        if all(x.stopped.is_set() for x in boxes):
            done.set()

    try:
        for index in range(len(listens)):
            box = FsSimulator(box_settings(args, index, users, on_shutdown))
            boxes.append(box.start())
            if args.events_per_second > 0:
                box.event_rate(args.events_per_second, args.event_name, args.event_subclass,
                               args.event_size or None, args.event_body_size or None)
            print("opensips-fs-sim: FreeSWITCH ESL on %s (Core-UUID %s)" % (box.address, box.identity.core_uuid),
                  flush=True)
        control = None
        if args.control:
            control = ControlServer(boxes, *args.control).start()
            print("opensips-fs-sim: control on %s" % control.address, flush=True)
    except OSError as exc:
        print("opensips-fs-sim: cannot listen: %s" % exc, file=sys.stderr)
        for box in boxes:
            box.stop()
        return 1

    def on_signal() -> None:
        for box in boxes:
            gevent.spawn(box.shutdown)
        gevent.spawn_later(3.0, done.set)

    gevent.signal_handler(signal.SIGTERM, on_signal)
    gevent.signal_handler(signal.SIGINT, on_signal)
    done.wait()
    gevent.joinall([gevent.spawn(b.shutdown) for b in boxes], timeout=3)
    if control is not None:
        control.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print OpenSIPS events received over UDP: a tiny EVI subscriber.

    python -m opensips_fs.tools.evi_print udp:127.0.0.1:9500 \\
        [--mi http://127.0.0.1:8888/mi] [--event E_FREESWITCH] [--expire 120] [--raw]

Binds the UDP address (port 0 picks a free one), subscribes it to the event
through MI ``event_subscribe`` over HTTP (retrying until the MI answers),
renews the subscription before it expires, and prints one line per datagram:
the time, the event and, for E_FREESWITCH, the FreeSWITCH event name, the
sender and the call's Unique-ID (``--raw`` prints the datagram as received).
Ctrl-C or SIGTERM unsubscribes (expire 0) and exits 0. Works against OpenSIPS
as well as opensips-fs. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
import urllib.error
import urllib.request

from ..config import split_udp

SUBSCRIBE_RETRY = 0.5      # s between attempts while the MI is not up yet
READ_TICK = 0.5            # s: how often the loop looks at the clock and at signals


class MiClient:
    """JSON-RPC 2.0 over HTTP, the way opensips-cli's http transport calls MI."""

    def __init__(self, url: str, timeout: float = 3.0):
        self.url = url
        self.timeout = timeout
        self._id = 0

    def call(self, method: str, params: object) -> object:
        self._id += 1
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params,
                           "id": self._id}).encode()
        request = urllib.request.Request(self.url, data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as reply:
            answer = json.loads(reply.read())
        if "error" in answer:
            error = answer["error"]
            raise RuntimeError(f"{method}: {error.get('code')} {error.get('message')}"
                               + (f" ({error['data']})" if "data" in error else ""))
        return answer.get("result")


def parse_udp(address: str) -> tuple[str, int]:
    host_port = split_udp(address)
    if host_port is None:
        raise argparse.ArgumentTypeError(f"expected udp:HOST:PORT, got {address!r}")
    return host_port


def describe(datagram: bytes, raw: bool) -> str:
    """One printable line for a received datagram."""
    stamp = time.strftime("%H:%M:%S")
    text = datagram.decode("utf-8", "replace")
    if raw:
        return f"{stamp} {text}"
    try:
        message = json.loads(text)
        event = message["method"]
        params = message.get("params") or {}
    except (ValueError, KeyError, TypeError):
        return f"{stamp} (not a JSON-RPC notification) {text}"
    if event == "E_FREESWITCH" and isinstance(params, dict):
        line = f"{stamp} {event} {params.get('name')} from {params.get('sender')}"
        try:
            body = json.loads(params.get("body") or "")
        except ValueError:
            body = None
        if isinstance(body, dict):
            extra = [f"{key}={body[key]}" for key in
                     ("Unique-ID", "Caller-Caller-ID-Number", "Caller-Destination-Number",
                      "Hangup-Cause", "DTMF-Digit") if key in body]
            if extra:
                line += " " + " ".join(extra)
        return line
    return f"{stamp} {event} {json.dumps(params, ensure_ascii=False)}"


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evi_print", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("socket", type=parse_udp, metavar="udp:HOST:PORT",
                        help="where to receive the events")
    parser.add_argument("--mi", default="http://127.0.0.1:8888/mi",
                        help="MI over HTTP URL (default %(default)s)")
    parser.add_argument("--event", default="E_FREESWITCH", help="event (default %(default)s)")
    parser.add_argument("--expire", type=int, default=120,
                        help="subscription lifetime in s, renewed at half-life (default %(default)s)")
    parser.add_argument("--wait", type=float, default=30.0,
                        help="give up if the MI does not answer within this many s")
    parser.add_argument("--raw", action="store_true", help="print datagrams as received")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _argument_parser()
    args = parser.parse_args(argv)
    if args.expire < 2:
        parser.error("--expire must be at least 2 s")

    stop: list[bool] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.append(True))

    sock = socket.socket(socket.AF_INET6 if ":" in args.socket[0] else socket.AF_INET,
                         socket.SOCK_DGRAM)
    sock.bind(args.socket)
    sock.settimeout(READ_TICK)
    host, port = sock.getsockname()[:2]
    target = f"udp:{host}:{port}"
    mi = MiClient(args.mi)

    failed = _subscribe(mi, args, target, stop)
    if failed is not None:
        return failed
    if stop:
        return 0
    print(f"evi_print: {target} subscribed to {args.event} via {args.mi}", file=sys.stderr,
          flush=True)
    _print_until_stopped(sock, mi, args, target, stop)
    try:
        mi.call("event_subscribe", [args.event, target, 0])
    except (OSError, urllib.error.URLError, RuntimeError, ValueError):
        pass            # the service may be stopping too: the subscription then expires
    sock.close()
    return 0


def _subscribe(mi: MiClient, args: argparse.Namespace, target: str, stop: list[bool]) -> int | None:
    """Subscribe `target`, retrying until the MI answers; the exit status
    when it cannot, None once subscribed (or stopped)."""
    deadline = time.monotonic() + args.wait
    while not stop:
        try:
            mi.call("event_subscribe", [args.event, target, args.expire])
            return None
        except RuntimeError as exc:
            print(f"evi_print: {exc}", file=sys.stderr)
            return 1
        except (OSError, urllib.error.URLError, ValueError) as exc:
            if time.monotonic() > deadline:
                print(f"evi_print: MI at {args.mi} not answering: {exc}", file=sys.stderr)
                return 1
            time.sleep(SUBSCRIBE_RETRY)
    return None


def _print_until_stopped(sock: socket.socket, mi: MiClient, args: argparse.Namespace, target: str,
                         stop: list[bool]) -> None:
    """Print each datagram; renew the subscription at half-life."""
    renew_at = time.monotonic() + args.expire / 2
    while not stop:
        datagram: bytes | None
        try:
            datagram = sock.recv(65535)
        except socket.timeout:
            datagram = None
        except InterruptedError:
            continue
        if datagram is not None:
            print(describe(datagram, args.raw), flush=True)
        if time.monotonic() >= renew_at:
            try:
                mi.call("event_subscribe", [args.event, target, args.expire])
            except (OSError, urllib.error.URLError, RuntimeError, ValueError) as exc:
                print(f"evi_print: renewing the subscription failed: {exc}", file=sys.stderr)
            renew_at = time.monotonic() + args.expire / 2


if __name__ == "__main__":
    sys.exit(main())

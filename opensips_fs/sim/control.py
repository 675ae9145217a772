"""The simulator's control socket: one JSON object per line in, one JSON
line out, so a benchmark or a test in another process can drive the boxes
(the same operations as the library methods of ``FsSimulator``).

Operations (``op``), each optionally aimed at one box with
``"listen": "HOST:PORT"`` (default: every box; counts are summed):

* ``{"op":"burst","count":K[,"name":…,"subclass":…,"size":N,"body_size":N]}``
  -> ``{"ok":true,"sent":K}`` once queued (as fast as each subscriber reads)
* ``{"op":"event","name":…,"headers":{…}|[[k,v]…],"body":…}`` -> ``{"ok":true,"sent":n}``
  (``"headers"`` alone with an ``Event-Name`` works too)
* ``{"op":"push","body":…|{…},"content_type":…,"force":false}`` -> ``{"ok":true,"sent":n}``
* ``{"op":"raw","data":"…"}`` (latin-1 text of the exact bytes) -> ``{"ok":true,"sent":n}``
* ``{"op":"rate","per_second":M[,"name":…,"subclass":…,"size":N,"body_size":N]}``
  -> ``{"ok":true}`` (M events/s from now on, 0 stops; no back-pressure)
* ``{"op":"api","command":"originate loopback/9664 &park"}`` -> ``{"ok":true,"outputs":[…]}``
* ``{"op":"log","level":"NOTICE","text":…}`` -> ``{"ok":true,"sent":n}`` (log/data frames)
* ``{"op":"drop"[,"notice":true]}`` -> ``{"ok":true,"kicked":n}``
* ``{"op":"stall","seconds":S[,"conn":N]}``, ``{"op":"restart"[,"down":S]}``,
  ``{"op":"refuse","on":true|false}``, ``{"op":"delay","ms":M}``,
  ``{"op":"password","password":P}``, ``{"op":"heartbeat"}``,
  ``{"op":"shutdown"}`` -> ``{"ok":true}``
* ``{"op":"state"[,"bytes":true]}`` -> ``{"ok":true,"boxes":[…]}`` (plus the
  box's ``conns`` at top level when one box is selected; with ``bytes`` each
  connection also has ``rx``/``tx``: the recorded bytes as latin-1 text)

A bad line gets ``{"ok":false,"error":"…"}`` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import gevent
import orjson
from gevent import socket

from .listener import Listener

if TYPE_CHECKING:
    from .server import FsSimulator

__all__ = ["ControlServer", "apply"]

MAX_LINE = 64 * 1024 * 1024

Request = dict[str, Any]  # one decoded JSON request line


class ControlError(Exception):
    pass


def _select(boxes: Sequence[FsSimulator], req: Request) -> list[FsSimulator]:
    target = req.get("listen")
    if target is None:
        return list(boxes)
    chosen = [b for b in boxes if b.address == target or str(b.port) == str(target)]
    if not chosen:
        raise ControlError("no box listens on %s" % target)
    return chosen


def _num(req: Request, key: str, default: float | None = None) -> float:
    value = req.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ControlError("%s must be a number" % key)
    return value


def _sizes(req: Request) -> dict[str, int | None]:
    """The optional ``size`` / ``body_size`` of generated events (0 or absent: none)."""
    return {key: int(req[key]) if req.get(key) else None for key in ("size", "body_size")}


def apply(boxes: Sequence[FsSimulator], req: object) -> dict:
    """Run one control request against ``boxes``; returns the answer."""
    if not isinstance(req, dict):
        raise ControlError("request must be a JSON object")
    op = req.get("op")
    chosen = _select(boxes, req)
    run = OPS.get(op) if isinstance(op, str) else None
    if run is None:
        raise ControlError("unknown op %r" % (op,))
    return run(chosen, req)


def _ok(**values: object) -> dict:
    return {"ok": True, **values}


def _burst(chosen: list[FsSimulator], req: Request) -> dict:
    count = int(_num(req, "count"))
    if count < 0:
        raise ControlError("count must be >= 0")
    kwargs: dict[str, Any] = {"name": str(req.get("name", "CUSTOM")), **_sizes(req)}
    if "subclass" in req:
        kwargs["subclass"] = req["subclass"]
    jobs = [gevent.spawn(b.burst, count, **kwargs) for b in chosen]
    gevent.joinall(jobs, raise_error=True)
    return _ok(sent=sum(j.get() for j in jobs))


def _event(chosen: list[FsSimulator], req: Request) -> dict:
    headers = req.get("headers") or {}
    if isinstance(headers, dict):
        headers = list(headers.items())
    elif not isinstance(headers, list):
        raise ControlError("headers must be an object or a list of pairs")
    name = req.get("name")
    if name is None:
        for k, v in headers:
            if k == "Event-Name":
                name = v
        headers = [(k, v) for k, v in headers if k != "Event-Name"]
    if not name:
        raise ControlError("event needs a name")
    body = req.get("body")
    return _ok(sent=sum(b.raise_event(str(name), headers, body) for b in chosen))


def _push(chosen: list[FsSimulator], req: Request) -> dict:
    body = req.get("body")
    if body is None:
        raise ControlError("push needs a body")
    ctype = str(req.get("content_type", "text/event-json"))
    force = bool(req.get("force", False))
    return _ok(sent=sum(b.push_event(body, ctype, force) for b in chosen))


def _raw(chosen: list[FsSimulator], req: Request) -> dict:
    data = req.get("data")
    if not isinstance(data, str):
        raise ControlError("raw needs data (latin-1 text of the bytes)")
    raw = data.encode("latin-1")
    return _ok(sent=sum(b.push_raw(raw) for b in chosen))


def _drop(chosen: list[FsSimulator], req: Request) -> dict:
    return _ok(kicked=sum(b.drop(bool(req.get("notice", False))) for b in chosen))


def _rate(chosen: list[FsSimulator], req: Request) -> dict:
    per_second = _num(req, "per_second")
    for b in chosen:
        b.event_rate(per_second, str(req.get("name", "CUSTOM")), req.get("subclass", "sim::load"),
                     **_sizes(req))
    return _ok()


def _stall(chosen: list[FsSimulator], req: Request) -> dict:
    seconds = _num(req, "seconds")
    conn = req.get("conn")
    if conn is not None:
        conn = int(_num(req, "conn"))
        for b in chosen:
            if not any(c.number == conn for c in b.clients):
                raise ControlError("no connection %d on %s" % (conn, b.address))
    for b in chosen:
        b.stall(seconds, conn)
    return _ok()


def _api(chosen: list[FsSimulator], req: Request) -> dict:
    command = req.get("command")
    if not isinstance(command, str) or not command:
        raise ControlError("api needs a command")
    name, _, arg = command.partition(" ")
    return _ok(outputs=[b.run_api(name, arg) for b in chosen])


def _log(chosen: list[FsSimulator], req: Request) -> dict:
    level, text = str(req.get("level", "NOTICE")), str(req.get("text", ""))
    return _ok(sent=sum(b.log_line(level, text) for b in chosen))


def _restart(chosen: list[FsSimulator], req: Request) -> dict:
    down = _num(req, "down", 0.0)
    for b in chosen:
        b.restart(down=down, notice=bool(req.get("notice", True)))
    return _ok()


def _refuse(chosen: list[FsSimulator], req: Request) -> dict:
    for b in chosen:
        b.refuse(bool(req.get("on", True)))
    return _ok()


def _delay(chosen: list[FsSimulator], req: Request) -> dict:
    ms = _num(req, "ms")
    for b in chosen:
        b.delay(ms)
    return _ok()


def _password(chosen: list[FsSimulator], req: Request) -> dict:
    password = req.get("password")
    if not isinstance(password, str):
        raise ControlError("password must be a string")
    for b in chosen:
        b.set_password(password)
    return _ok()


def _heartbeat(chosen: list[FsSimulator], req: Request) -> dict:
    return _ok(sent=sum(b.fire_heartbeat() for b in chosen))


def _shutdown(chosen: list[FsSimulator], req: Request) -> dict:
    for b in chosen:
        gevent.spawn(b.shutdown)
    return _ok()


def _state(chosen: list[FsSimulator], req: Request) -> dict:
    states = [b.state() for b in chosen]
    if req.get("bytes"):  # every byte each connection sent and got, as latin-1 text
        for box, state in zip(chosen, states):
            by_number = {c.number: c for c in box.clients}
            for conn in state["conns"] + state["closed"]:
                client = by_number.get(conn["conn"])
                if client is not None:
                    conn["rx"] = client.rx.decode("latin-1")
                    conn["tx"] = client.tx.decode("latin-1")
    answer = _ok(boxes=states)
    if len(states) == 1:
        answer["conns"] = states[0]["conns"]
    return answer


# op -> handler(chosen boxes, request) -> answer
OPS: dict[str, Callable[[list[FsSimulator], Request], dict]] = {
    "burst": _burst, "event": _event, "push": _push, "raw": _raw, "drop": _drop,
    "rate": _rate, "stall": _stall, "api": _api, "log": _log, "restart": _restart,
    "refuse": _refuse, "delay": _delay, "password": _password, "heartbeat": _heartbeat,
    "shutdown": _shutdown, "state": _state,
}


class ControlServer:
    """TCP listener speaking the line protocol above."""

    def __init__(self, boxes: Sequence[FsSimulator], host: str = "127.0.0.1", port: int = 0):
        self.boxes = boxes
        self.host = host
        self.port = port
        self._listener: Listener | None = None
        self._conns: set[socket.socket] = set()

    @property
    def address(self) -> str:
        return "%s:%d" % (self.host, self.port)

    def start(self) -> "ControlServer":
        self._listener = Listener(self.host, self.port, self._accept, backlog=16).open()
        self.port = self._listener.port
        return self

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in list(self._conns):
            try:
                conn.close()
            except OSError:
                pass

    def _accept(self, conn: socket.socket, addr: Any) -> None:
        self._conns.add(conn)
        gevent.spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                if len(buf) > MAX_LINE:
                    conn.sendall(b'{"ok":false,"error":"line too long"}\n')
                    return
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        break
                    line = bytes(buf[:nl]).strip()
                    del buf[:nl + 1]
                    if not line:
                        continue
                    conn.sendall(orjson.dumps(self.handle_line(line)) + b"\n")
        except OSError:
            pass
        finally:
            self._conns.discard(conn)
            conn.close()

    def handle_line(self, line: bytes) -> dict:
        try:
            req = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return {"ok": False, "error": "bad JSON: %s" % exc}
        try:
            return apply(self.boxes, req)
        except (ControlError, ValueError, TypeError) as exc:
            return {"ok": False, "error": str(exc)}

"""Simulated calls: ``originate loopback/EXT …`` runs a two-leg loopback call
that fires the real CHANNEL_* sequence (docs/protocols/esl.md §6.7), ``hupall``/``uuid_kill``
run the real hangup sequence, ``show calls|channels`` lists the live legs,
and ``load_loop`` runs synthetic calls continuously for load tests.

Event contents come from the package data ``call_templates.json`` (made by
``gen_templates.py`` from the recorded FreeSWITCH calls, read once at
import): the same header names, order and values, with uuids, extension,
times, durations, session ids and the hangup cause filled in.

Dialplan, as in the recordings: ``9664``/``9666``/``9196`` answer and park
until hung up; ``9665`` answers and the B-leg hangs up after
``call_duration`` seconds (1 s by default); any other extension gives
``-ERR NO_ROUTE_DESTINATION``; an endpoint other than loopback gives
``-ERR CHAN_NOT_IMPLEMENTED``.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Callable, Collection
from importlib import resources
from typing import TYPE_CHECKING

import gevent

if TYPE_CHECKING:
    from .client import SimClient
    from .server import FsSimulator

__all__ = ["CallEngine", "Call", "DIALPLAN"]

DIALPLAN = {"9664": "park", "9666": "park", "9196": "park", "9665": "hangup"}
Q850 = {"NORMAL_CLEARING": "16", "MANAGER_REQUEST": "0", "USER_BUSY": "17", "NO_ANSWER": "19",
        "CALL_REJECTED": "21", "ORIGINATOR_CANCEL": "487", "NO_ROUTE_DESTINATION": "3"}
_VARS_RE = re.compile(r"^\{([^}]*)\}")
_PLACEHOLDER = re.compile(r"(?<!\{)\{[A-Z_0-9]+\}")


def _load_templates() -> dict:
    text = resources.files(__package__).joinpath("call_templates.json").read_text(encoding="utf-8")
    return json.loads(text)


# (leg, Event-Name, calling, [(literal headers, [(position, name, format)])] without/with origination)
_Template = tuple[str, str, tuple, list[tuple[list[tuple[str, str]], list[tuple[int, str, str]]]]]


def _compile(templates: list) -> list[_Template]:
    """Prepare each template once: the literal headers as ready pairs, plus
    (position, name, format) for the few values filled in per call; one
    variant with and one without ``variable_origination_uuid``."""
    out: list[_Template] = []
    for leg, name, calling, headers in templates:
        variants = []
        for origination in (False, True):
            base: list[tuple[str, str]] = []
            slots: list[tuple[int, str, str]] = []
            for key, value in headers:
                if key == "variable_origination_uuid" and not origination:
                    continue
                if _PLACEHOLDER.search(value):
                    slots.append((len(base), key, value))
                    base.append((key, ""))
                else:
                    base.append((key, value.replace("{{", "{").replace("}}", "}")))
            variants.append((base, slots))
        out.append((leg, name, tuple(calling), variants))
    return out


_TEMPLATES = _load_templates()
SETUP = _compile(_TEMPLATES["SETUP"])
POST_ANSWER = _compile(_TEMPLATES["POST_ANSWER"])
HANGUP_PARKED = _compile(_TEMPLATES["HANGUP_PARKED"])
HANGUP_BY_B = _compile(_TEMPLATES["HANGUP_BY_B"])
HANGUP_PARKED_ORIGINATION = _compile(_TEMPLATES["HANGUP_PARKED_ORIGINATION"])
SHOW_ROWS = _TEMPLATES["SHOW_ROWS"]


def _stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _times(name: str, epoch: float | None) -> dict:
    """T_<name>, E_<name>, S_<name>: ``epoch`` in µs, in s and as a local
    time stamp ("0", "0", "" when it has not happened)."""
    if epoch is None:
        return {"T_" + name: "0", "E_" + name: "0", "S_" + name: ""}
    return {"T_" + name: str(int(epoch * 1_000_000)), "E_" + name: str(int(epoch)), "S_" + name: _stamp(epoch)}


class Call:
    """A loopback call: legs A (outbound, ``loopback/EXT-a``) and B (inbound)."""

    def __init__(self, engine: CallEngine, ext: str, a_uuid: str, b_uuid: str, kind: str, origination: bool):
        self.engine = engine
        self.ext = ext
        self.kind = kind
        self.uuids = {"A": a_uuid, "B": b_uuid}
        self.origination = origination
        self.created = engine.box.clock()
        self.answered: float | None = None
        self.hangup_at: float | None = None
        self.cause = "NORMAL_CLEARING"
        self.sessions = {"A": engine.next_session(), "B": engine.next_session()}
        self.alive = True
        self.hanging = False
        self.watchers: list[SimClient] = []
        self.timer: gevent.Greenlet | None = None

    def context(self, leg: str) -> dict:
        """The values of the template placeholders for one leg, now."""
        end = self.hangup_at if self.hangup_at is not None else self.engine.box.clock()
        dur_us = int((end - self.created) * 1_000_000)
        return {
            "A": self.uuids["A"], "B": self.uuids["B"], "EXT": self.ext,
            "SESSION": str(self.sessions[leg]), "CAUSE": self.cause, "Q850": Q850.get(self.cause, "0"),
            **_times("CREATED", self.created), **_times("ANSWERED", self.answered), **_times("HANGUP", end),
            "DUR_S": str(dur_us // 1_000_000), "DUR_MS": str(dur_us // 1000), "DUR_US": str(dur_us),
        }

    def fire(self, templates: list[_Template], skip: Collection[tuple[str, str]] = ()) -> None:
        box = self.engine.box
        contexts: dict[str, dict] = {}
        variant = 1 if self.origination else 0
        for leg, name, calling, variants in templates:
            if (leg, name) in skip:
                continue
            ctx = contexts.get(leg)
            if ctx is None:
                ctx = contexts[leg] = self.context(leg)
            base, slots = variants[variant]
            values = base.copy()
            for index, key, fmt in slots:
                values[index] = (key, fmt.format_map(ctx))
            event = box.make_event(name, values, None, None, calling)
            box.fire(event)
            if name == "CHANNEL_HANGUP_COMPLETE":
                self._notify_watchers(self.uuids[leg])

    def _notify_watchers(self, uuid: str) -> None:
        for client in [c for c in self.watchers if c.myevents == uuid]:
            self.watchers.remove(client)
            self.engine.box.end_myevents(client, uuid)

    def setup(self) -> None:
        skip = set()
        if self.kind == "hangup":  # the B-leg runs answer/sleep/hangup, not park
            skip = {("B", "CHANNEL_PARK")}
        self.answered = self.created
        self.fire(SETUP, skip)

    def hangup(self, cause: str, by_b: bool = False) -> None:
        if self.hanging or not self.alive:
            return
        self.hanging = True
        if self.timer is not None:
            self.timer.kill(block=False)
        self.cause = cause
        self.hangup_at = self.engine.box.clock()
        if by_b:
            templates = HANGUP_BY_B
        else:
            templates = HANGUP_PARKED_ORIGINATION if self.origination else HANGUP_PARKED
        self.fire(templates)
        self.alive = False
        self.engine.remove(self)


class CallEngine:
    """The live calls of one simulated box."""

    def __init__(self, box: FsSimulator, call_duration: float = 1.0):
        self.box = box
        self.calls: list[Call] = []
        self.channels: dict[str, Call] = {}  # leg uuid -> call
        self.call_duration = call_duration
        self.since_startup = 0
        self.peak = 0
        self._session = 0
        self._created_times: deque[float] = deque()
        self.per_sec_peak = 0
        self._glets: list[gevent.Greenlet] = []

    # -- bookkeeping -------------------------------------------------------------
    def next_session(self) -> int:
        self._session += 1
        return self._session

    def remove(self, call: Call) -> None:
        if call in self.calls:
            self.calls.remove(call)
        for uuid in call.uuids.values():
            self.channels.pop(uuid, None)

    def stats(self) -> dict:
        now = time.monotonic()
        times = self._created_times
        while times and now - times[0] > 300:
            times.popleft()
        last_sec = sum(1 for t in times if now - t <= 1.0)
        return {"count": len(self.channels), "since_startup": self.since_startup, "peak": self.peak,
                "peak_5min": self.peak, "per_sec_last": last_sec, "max_per_sec": 30,
                "per_sec_peak": self.per_sec_peak, "per_sec_5min": self.per_sec_peak}

    def exists(self, uuid: str) -> bool:
        return uuid in self.channels

    def watch(self, uuid: str, client: SimClient) -> None:
        call = self.channels.get(uuid)
        if call is not None:
            call.watchers.append(client)

    # -- api ------------------------------------------------------------------------
    def originate(self, url: str) -> str:
        """``originate URL …``: start the call, the reply once the A-leg answered."""
        variables = {}
        m = _VARS_RE.match(url)
        if m:
            for item in m.group(1).split(","):
                key, _, value = item.partition("=")
                variables[key.strip()] = value.strip()
            url = url[m.end():]
        endpoint, _, dest = url.partition("/")
        if endpoint != "loopback":
            return "-ERR CHAN_NOT_IMPLEMENTED\n"
        ext = dest.split("/")[0]
        kind = DIALPLAN.get(ext)
        if kind is None:
            return "-ERR NO_ROUTE_DESTINATION\n"
        a_uuid = variables.get("origination_uuid") or self.box.new_uuid()
        if a_uuid in self.channels:
            return "-ERR ORIGINATOR_CANCEL\n"
        call = self.start_call(ext, kind, a_uuid, "origination_uuid" in variables)
        gevent.sleep(0.02)  # the A-leg reports answered ~20 ms later
        gevent.spawn(self._post_answer, call)
        return "+OK %s\n" % a_uuid

    def start_call(self, ext: str, kind: str, a_uuid: str | None = None, origination: bool = False,
                   duration: float | None = None) -> Call:
        call = Call(self, ext, a_uuid or self.box.new_uuid(), self.box.new_uuid(), kind, origination)
        self.calls.append(call)
        for uuid in call.uuids.values():
            self.channels[uuid] = call
        self.since_startup += 2
        self.peak = max(self.peak, len(self.channels))
        now = time.monotonic()
        self._created_times.extend((now, now))  # one per leg
        self.per_sec_peak = max(self.per_sec_peak, sum(1 for t in self._created_times if now - t <= 1.0))
        call.setup()
        if kind == "hangup":
            call.timer = gevent.spawn_later(self.call_duration if duration is None else duration,
                                            call.hangup, "NORMAL_CLEARING", True)
        return call

    def _post_answer(self, call: Call) -> None:
        if call.alive and not call.hanging:
            call.fire(POST_ANSWER)

    def kill(self, uuid: str, cause: str = "NORMAL_CLEARING") -> bool:
        call = self.channels.get(uuid)
        if call is None or call.hanging:
            return False
        self._later(call.hangup, cause, False)
        return True

    def hupall(self, cause: str = "MANAGER_REQUEST") -> int:
        calls = [c for c in self.calls if not c.hanging]
        if calls:
            self._later(self._hangup_all, calls, cause)
        return len(calls)

    def _hangup_all(self, calls: list[Call], cause: str) -> None:
        for call in calls:
            call.hangup(cause)

    def _later(self, func: Callable[..., object], *args: object) -> None:
        """Run ``func`` 20 ms from now: FreeSWITCH replies before the hangup."""
        self._glets = [g for g in self._glets if not g.dead]
        self._glets.append(gevent.spawn_later(0.02, func, *args))

    def show_rows(self, what: str) -> list[dict[str, str]]:
        rows = []
        templates = SHOW_ROWS["channels" if what == "channels" else "calls"]
        for call in list(self.calls):
            for leg, template in zip(("A", "B"), templates):
                ctx = call.context(leg)
                row = {}
                for key, value in template:
                    if key == "created":
                        value = _stamp(call.created)
                    elif key == "created_epoch":
                        value = str(int(call.created))
                    elif key == "hostname":
                        value = self.box.identity.hostname
                    else:
                        value = value.format_map(ctx)
                    row[key] = value
                rows.append(row)
        return rows

    # -- load -------------------------------------------------------------------------
    def load_loop(self, calls_per_second: float) -> None:
        """Start ``calls_per_second`` synthetic calls (loopback/9665: answered,
        hung up by the B-leg after ``call_duration``) for ever."""
        interval = 1.0 / calls_per_second
        next_at = time.monotonic()
        while True:
            self.start_call("9665", "hangup")
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            else:
                gevent.sleep(0)
                if delay < -1.0:  # cannot keep up: do not try to catch up a backlog
                    next_at = time.monotonic()

    def stop(self) -> None:
        for call in list(self.calls):
            if call.timer is not None:
                call.timer.kill(block=False)
        for glet in self._glets:
            glet.kill(block=False)
        self._glets.clear()
        self.calls.clear()
        self.channels.clear()

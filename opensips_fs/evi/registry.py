"""The EVI registry: published events, subscribers, expiry and the EVI MI commands.

Reproduces OpenSIPS's Event Interface (docs/protocols/evi.md §1-§2): the published events
and their ids, `event_subscribe` (newest subscriber first, re-subscribing
refreshes in place, `expire` 0 unsubscribes), lazy whole-second expiry
(removed when the event is raised or listed, strictly after
`subscription_time + expire`), `events_list`, `subscribers_list`,
`raise_event`, plus our `evi_status` (per destination figures).

Raising never blocks: the payload is serialized once and appended to each
subscriber's destination queue (see `delivery`). `raise_freeswitch` is the
hot path called from the ESL reader for every relayed event. A subscriber
whose notification cannot be built or queued loses it alone: the error is
counted and logged on its destination, the other subscribers get theirs.
While more than `YIELD_ABOVE_BYTES` are queued in the process, the raising
greenlet yields every `YIELD_EVERY` raises so that the senders drain the
queues as fast as the events come (an ESL reader with data always waiting
would otherwise fill the queues before any sender runs).

Destinations are identified by their whole address (`_destination_key`):
two http subscribers of one host with different paths are two
destinations. Only `tcp:`/`jsonrpc:` subscribers of one host:port share
one (one connection, docs/protocols/evi.md §4.4).

[EMU] `expire` 0 stops the subscriber's deliveries at once (OpenSIPS still
delivers what is raised during the same second); the row stays listed as
`"expired"` until the lazy expiry removes it, as OpenSIPS shows it. A
destination no subscriber uses any more is retired (`Destination.retire`:
what is queued goes out only while it works, never retried). A timer also removes expired subscribers every second.
At `stop()` the queues get their module's `drain_timeout` to empty. Once a
burst is over (the queues back under a quarter of `YIELD_ABOVE_BYTES`), the
timer hands the freed heap back to the OS (`heap.trim`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, cast

import gevent

from .. import heap
from ..config import EventHttpSettings, EventXmlRpcSettings
from ..mi.commands import MiCommand, MiError, bad_type, invalid_params
from . import payload as P
from .address import Address, Target, parse_socket, resolve
from .datagram import DatagramDestination
from .delivery import Destination, EviCounters
from .http import HttpDestination
from .queue import DEFAULT_TOTAL_BYTES, QueueBudget
from .rabbitmq import RabbitmqDestination, label_of
from .rabbitmq_address import RabbitTarget
from .stream import StreamDestination
from .xmlrpc import XmlRpcDestination, request, request_params

if TYPE_CHECKING:
    from ..mi.commands import Params as MiParams
    from ..stats import Stats

__all__ = ["EviRegistry", "PUBLISHED_EVENTS", "DEFAULT_EXPIRE"]

log = logging.getLogger("opensips_fs.evi")

PUBLISHED_EVENTS = (
    "E_CORE_SR_STATUS_CHANGED",
    "E_CORE_THRESHOLD",
    "E_CORE_SHM_THRESHOLD",
    "E_CORE_PKG_THRESHOLD",
    "E_CORE_PROC_AUTO_SCALE",
    "E_CORE_TCP_DISCONNECT",
    "E_PROFILING_SCRIPT",
    "E_PROFILING_PROC",
    "E_FREESWITCH",
    "E_CORE_LOG",
)
DEFAULT_EXPIRE = 3600
YIELD_ABOVE_BYTES = 1 << 20
YIELD_EVERY = 32
SWEEP_INTERVAL = 1.0
_NEVER = float("inf")


class Subscriber:
    """One row of the subscriber table; `dest` is None once it unsubscribed
    (expire 0) and until the lazy expiry removes the row."""

    __slots__ = ("target", "expire", "since", "dest", "head", "plain")

    def __init__(self, target: Target, expire: int, since: int, dest: Destination | None):
        self.target = target
        self.expire = expire
        self.since = since
        self.dest = dest
        # a tcp /method override: the notification head for that method
        self.head = P.method_head(target.method) if (
            target.method and target.transport in ("tcp", "jsonrpc")) else None
        # plain: sent the shared payload (not a tcp /method, not xmlrpc)
        self.plain = self.head is None and target.transport != "xmlrpc"

    @property
    def deadline(self) -> int:
        return self.since + self.expire

    def to_json(self, now: int) -> dict:
        ttl = self.expire - (now - self.since)
        return {"socket": self.target.printed, "expire": self.expire,
                "ttl": ttl if ttl > 0 else "expired"}


class Event:
    """A published event: its subscriber table and the subscribers that
    receive it (`live`: those with a destination, same order)."""

    __slots__ = ("id", "name", "subscribers", "live", "next_deadline")

    def __init__(self, id_: int, name: str):
        self.id = id_
        self.name = name
        self.subscribers: list[Subscriber] = []
        self.live: list[Subscriber] = []
        self.next_deadline = _NEVER

    def refresh(self) -> None:
        """After any change of the table."""
        self.live = [s for s in self.subscribers if s.dest is not None]
        self.next_deadline = min((s.deadline for s in self.subscribers), default=_NEVER)


class EviRegistry:
    """Events, subscribers and their destinations (see module docstring)."""

    # transports: loaded event_* module -> its settings (EviTransportSettings or the module's subclass)
    def __init__(self, stats: Stats, transports: dict[str, Any] | None,
                 total_queue_bytes: int = DEFAULT_TOTAL_BYTES):
        self.stats = stats
        self.transports = dict(transports or {})
        # a module not loaded has no subscribers; its defaults keep these typed
        xmlrpc = self.transports.get("event_xmlrpc") or EventXmlRpcSettings()
        http = self.transports.get("event_http") or EventHttpSettings()
        self._xmlrpc_struct = bool(xmlrpc.use_struct_param)
        self._verify_cert = bool(http.verify_cert)
        self.counters = EviCounters(stats)
        self.events: dict[str, Event] = {}
        for name in PUBLISHED_EVENTS:
            self.events[name] = Event(len(self.events), name)
        self._freeswitch = self.events["E_FREESWITCH"]
        self._destinations: dict[tuple, Destination] = {}
        self.budget = QueueBudget(total_queue_bytes)   # every queue of the process
        self._started = False
        self._sweeper: gevent.Greenlet | None = None
        self._raised = 0
        self._burst = False      # more than YIELD_ABOVE_BYTES were queued since the last trim
        self.clock = time.time   # whole seconds of it decide expiry (tests set it)
        stats.gauge("evi", "subscribers",
                    lambda: sum(len(e.subscribers) for e in self.events.values()),
                    "EVI subscribers now")
        stats.gauge("evi", "queued",
                    lambda: sum(d.queued for d in self._destinations.values()),
                    "notifications queued for EVI destinations now")

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        self._started = True
        for dest in list(self._destinations.values()):
            dest.start()
        if self._sweeper is None:
            self._sweeper = gevent.spawn(self._sweep)

    def stop(self) -> None:
        """Give every queue its module's `drain_timeout` to empty, then stop
        every sender; what is still queued is counted as dropped (logged)."""
        self._started = False
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
            self._sweeper = None
        dests = list(self._destinations.values())
        now = time.monotonic()
        gevent.joinall([gevent.spawn(d.drain, now + d.drain_timeout) for d in dests
                        if d.running and (d.queued or d.unconfirmed())])
        for dest in dests:
            dest.stop()
            dest.drop_queued("stopped with %d undelivered notifications")

    def _sweep(self) -> None:
        while True:
            gevent.sleep(SWEEP_INTERVAL)
            now = int(self.clock())
            for event in self.events.values():
                self._expire(event, now)
            if self._burst and self.budget.used < YIELD_ABOVE_BYTES // 4:
                self._burst = False
                heap.trim()      # the burst is over: its memory goes back to the OS

    # -- raising --------------------------------------------------------------
    def has_subscribers(self, name: str) -> bool:
        """Whether raising `name` now would notify anyone."""
        event = self.events.get(name)
        if event is None or not event.subscribers:
            return False
        self._expire(event, int(self.clock()))
        return bool(event.live)

    def raise_freeswitch(self, name: str, sender: str, body: bytes) -> None:
        """Raise E_FREESWITCH (name, sender, body). The relay hot path."""
        event = self._freeswitch
        if not event.live:
            return
        try:
            if self.clock() >= event.next_deadline + 1:
                self._expire(event, int(self.clock()))
                if not event.live:
                    return
            text = body.decode("utf-8", "surrogateescape")
            tail = P.freeswitch_tail(name, sender, text)
        except Exception:  # never let a bad event hurt the ESL reader
            log.exception("E_FREESWITCH raise failed (event %r from %r)", name, sender)
            return
        payload = P.FREESWITCH_HEAD + tail
        for sub in event.live:
            dest = sub.dest
            if dest is None:           # not in `live`; this keeps the type checker informed
                continue
            try:
                if sub.plain:
                    dest.put(payload)
                else:
                    self._put_special(sub, dest, event.name,
                                      [("name", name), ("sender", sender), ("body", text)], tail)
            except Exception as exc:   # this subscriber's loss only
                dest.failed_to_build(exc)
        if self.budget.used > YIELD_ABOVE_BYTES:
            self._burst = True
            self._raised += 1
            if not self._raised % YIELD_EVERY:
                gevent.sleep(0)    # let the senders drain (see the module docstring)

    def raise_event(self, name: str, params: P.Params | None = None) -> None:
        """Raise any published event with params [(name, str|int)]; never blocks.

        An event that is not published (docs/protocols/evi.md §1) is logged and ignored."""
        event = self.events.get(name)
        if event is None:
            log.warning("EVI: cannot raise %s: not a published event", name)
            return
        self._expire(event, int(self.clock()))
        if not event.live:
            return
        note = P.notification(name, params)
        for sub in event.live:
            dest = sub.dest
            if dest is None:
                continue
            try:
                if sub.plain:
                    dest.put(note.payload)
                else:
                    self._put_special(sub, dest, name, params, note.tail)
            except Exception as exc:   # this subscriber's loss only
                dest.failed_to_build(exc)

    def _put_special(self, sub: Subscriber, dest: Destination, event: str, params: P.Params | None,
                     tail: bytes) -> None:
        if sub.head is not None:
            dest.put(sub.head + tail)
        else:
            t = sub.target
            dest.put(request(t.host, t.port, t.path, t.method or "", event,
                             request_params(params, self._xmlrpc_struct)))

    # -- subscriber table -------------------------------------------------------
    def _expire(self, event: Event, now: int) -> None:
        if now <= event.next_deadline:
            return
        keep = []
        for sub in event.subscribers:
            if sub.deadline < now:
                self._end(sub)
            else:
                keep.append(sub)
        event.subscribers = keep
        event.refresh()

    def _end(self, sub: Subscriber) -> None:
        """The subscriber receives nothing more; its destination is released."""
        dest, sub.dest = sub.dest, None
        if dest is not None:
            self._release(dest)

    def subscribe(self, event_name: str, socket_text: str, expire: int) -> None:
        """`event_subscribe` minus the MI param reading (raises MiError 400)."""
        event = self.events.get(event_name)
        if event is None:
            raise MiError(400, "Bad parameter value")
        target = parse_socket(socket_text)
        if target is None or target.module not in self.transports:
            raise MiError(400, "Bad parameter value")
        if getattr(target, "tls_domain", None) is not None and \
                not self.transports[target.module].use_tls:
            raise MiError(400, "Bad parameter value")   # as OpenSIPS: use_tls needed
        now = int(self.clock())
        for sub in event.subscribers:
            if sub.target.match == target.match:
                if expire == 0:
                    self._end(sub)
                elif sub.dest is None:       # unsubscribed this second, back again
                    sub.dest = self._acquire(sub.target, resolve_or_400(sub.target))
                sub.since = now
                sub.expire = expire
                event.refresh()
                return
        address = resolve_or_400(target)
        dest = self._acquire(target, address) if expire else None
        sub = Subscriber(target, expire, now, dest)
        event.subscribers.insert(0, sub)
        event.refresh()

    # -- destinations -------------------------------------------------------------
    def queue_limits(self, module: str) -> dict:
        """The queue bounds of a destination of `module` (keyword arguments
        of `Destination`): its modparams and the process-wide budget."""
        return {"queue_bytes": self.transports[module].queue_bytes, "budget": self.budget}

    def _acquire(self, target: Target, address: Address) -> Destination:
        key, label = _destination_key(target, address)
        dest = self._destinations.get(key)
        if dest is None:
            settings = self.transports[target.module]  # subscribe checked it is loaded
            size = settings.queue_size
            limits = self.queue_limits(target.module)
            transport = target.transport
            if transport in ("tcp", "jsonrpc"):
                dest = StreamDestination(key, label, size, self.counters, cast("tuple[str, int]", address), **limits)
            elif transport == "xmlrpc":
                dest = XmlRpcDestination(key, label, size, self.counters, cast("tuple[str, int]", address), **limits)
            elif transport in ("http", "https"):
                dest = HttpDestination(key, label, size, self.counters, target,
                                       verify_cert=self._verify_cert, **limits)
            elif transport == "rabbitmq":
                dest = RabbitmqDestination(key, label, size, self.counters,
                                           cast(RabbitTarget, target), settings, **limits)
            else:
                dest = DatagramDestination(key, label, size, self.counters, address, **limits)
            dest.drain_timeout = settings.drain_timeout
            self._destinations[key] = dest
            if self._started:
                dest.start()
        dest.refs += 1
        return dest

    def _release(self, dest: Destination) -> None:
        dest.refs -= 1
        if dest.refs <= 0:
            if self._destinations.get(dest.key) is dest:
                del self._destinations[dest.key]
            dest.retire()

    def destinations(self) -> list[Destination]:
        return list(self._destinations.values())

    def status(self) -> list[dict]:
        """Per destination: socket, transport, queued (events, bytes), sent,
        dropped, retried, send_errors, state, last_error (MI `evi_status`,
        metrics)."""
        return [d.status() for d in self._destinations.values()]

    # -- MI -------------------------------------------------------------------------
    def mi_commands(self) -> list[MiCommand]:
        return [
            MiCommand("evi", "subscribe", "event_subscribe",
                      [["event", "socket"], ["event", "socket", "expire"]],
                      self._mi_subscribe, "subscribes an external application for a certain event"),
            MiCommand("evi", "list", "events_list", [[]], self._mi_list,
                      "lists all the events advertised through the OpenSIPS Event Interface"),
            MiCommand("evi", "subscribers", "subscribers_list",
                      [[], ["event"], ["event", "socket"]], self._mi_subscribers,
                      "lists all the OpenSIPS Event Interface's subscribers"),
            MiCommand("evi", "raise", "raise_event", [["event"], ["event", "params"]],
                      self._mi_raise, "raises an event through the OpenSIPS Event Interface"),
            MiCommand("evi", "status", "evi_status", [[]], self._mi_status,
                      help="per EVI destination: queue, sent, dropped, retried, errors"),
        ]

    def _mi_subscribe(self, params: MiParams) -> str:
        expire = DEFAULT_EXPIRE
        if "expire" in params:
            expire = params.int("expire")
            if expire < 0:
                raise invalid_params("Negative expire value")
        event = params.string("event")
        if not event:
            raise bad_type("event")
        socket_text = params.string("socket")
        if not socket_text:
            raise bad_type("socket")
        self.subscribe(event, socket_text, expire)
        return "OK"

    def _mi_list(self, params: MiParams) -> dict:
        return {"Events": [{"name": e.name, "id": e.id} for e in self.events.values()]}

    def _mi_subscribers(self, params: MiParams) -> dict:
        now = int(self.clock())
        if "event" not in params:
            listed = []
            for event in self.events.values():
                self._expire(event, now)
                if event.subscribers:
                    listed.append({"name": event.name, "id": event.id,
                                   "Subscribers": [s.to_json(now) for s in event.subscribers]})
            return {"Events": listed}
        chosen = self.events.get(params.string("event"))
        if chosen is None:
            raise MiError(404, "Event not published")
        event = chosen
        self._expire(event, now)
        if "socket" in params:
            target = parse_socket(params.string("socket"))
            for sub in event.subscribers:
                if target is not None and sub.target.match == target.match:
                    return {"Event": {"name": event.name, "id": event.id,
                                      "Subscriber": sub.to_json(now)}}
            raise MiError(404, "Subscriber does not exist")
        if not event.subscribers:
            return {"Event": {}}
        return {"Event": {"name": event.name, "id": event.id,
                          "Subscribers": [s.to_json(now) for s in event.subscribers]}}

    def _mi_raise(self, params: MiParams) -> str:
        event = self.events.get(params.string("event"))
        if event is None:
            raise MiError(404, "Event not registered")
        self._expire(event, int(self.clock()))
        if not event.live:
            raise MiError(480, "Temporarily Unavailable")
        self.raise_event(event.name, P.parse_mi_params(params.raw("params")))
        return "OK"

    def _mi_status(self, params: MiParams) -> dict:
        return {"Destinations": self.status()}


def resolve_or_400(target: Target) -> Address:
    try:
        return resolve(target)
    except OSError:
        raise MiError(400, "Bad parameter value") from None


def _destination_key(target: Target, address: Address) -> tuple[tuple, str]:
    """(key, label) of the destination of a subscriber: its whole address
    (only tcp / jsonrpc subscribers of one host:port share one)."""
    transport = target.transport
    if transport in ("tcp", "jsonrpc"):
        return ("tcp", address), f"tcp:{address[0]}:{address[1]}"
    if transport == "xmlrpc":
        return (("xmlrpc", address, target.path),
                f"xmlrpc:{address[0]}:{address[1]}{target.path}")
    if transport in ("http", "https"):
        return ((transport, target.host, target.port, target.path, target.userinfo),
                f"{transport}://{target.host}:{target.port}{target.path}")
    if transport == "rabbitmq":
        return ("rabbitmq", target), label_of(cast(RabbitTarget, target))   # one connection per subscriber socket
    if transport == "unix":
        return ("unix", address), f"unix:{address}"
    return ("udp", address), f"udp:{address[0]}:{address[1]}"

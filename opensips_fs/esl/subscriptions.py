"""Sans-IO bookkeeping of one ESL socket's event subscriptions: reference
sums, the wire state of each name, what must go on the wire next, and what a
reply or a lost connection does. No sockets, no clock (the caller passes
`now`), no logging: `socket.py` does the I/O and reports what happens here.

Supports
    * reference sums per event name; names are kept and sent exactly as
      given, and matched case-insensitively for delivery (`wants()`), as
      FreeSWITCH does;
    * `event json NAME` when a sum leaves 0, `nixevent NAME` when it returns
      to 0 — one command per name, in first-subscribed order — except when
      another spelling of the same name stays subscribed (FreeSWITCH would
      drop both);
    * a name FreeSWITCH refuses stays pending and is retried on the schedule
      of `rejected_retry_gap()`; one cancelled before it was ever accepted
      leaves without a `nixevent`;
    * a lost connection: nothing is subscribed on the wire any more, every
      name with a reference is sent again on the next connection.

Goals
    Fast on average: a change costs O(1) (a dict update and a mark in the
    "dirty" set); `next_commands()` looks only at names changed or due for a
    retry since its last call, never at the whole set, so a socket with
    thousands of names pays per change, not per name. Linear in the worst
    case: after a reconnect every name goes out once (O(n)); nothing is ever
    quadratic in the number of names (spellings of one name are grouped).

Plan
    `Subscription` holds one name's refs and `SubState`. Changes mark the name
    dirty; rejected names sit in a heap keyed by their retry time. The owner
    loops: `next_commands(now)` -> send the texts (pipelined) -> feed each
    reply to `on_reply()`; `next_retry(now)` says how long it may sleep;
    `connection_lost()` resets the wire state.
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass

from .protocol import event_command, nixevent_command

__all__ = ["ReplyOutcome", "SubState", "Subscription", "Subscriptions", "rejected_retry_gap"]


class SubState(enum.StrEnum):
    PENDING = "pending"   # wanted, not (yet) accepted by FreeSWITCH: to send or to retry
    SENDING = "sending"   # `event json` sent, reply awaited
    ACTIVE = "active"     # accepted by FreeSWITCH
    NIXING = "nixing"     # `nixevent` sent, reply awaited


def rejected_retry_gap(rejections: int) -> float:
    """Seconds before re-sending an `event json NAME` FreeSWITCH refused
    `rejections` times in a row: 1 s ten times (OpenSIPS retries every tick),
    then 2, 4, 8, 16, 30, 30… s."""
    if rejections <= 10:
        return 1.0
    return float(min(30, 2 ** min(rejections - 10, 5)))


class Subscription:
    """One event name on one socket: its reference sum and wire state."""

    __slots__ = ("name", "key", "seq", "refs", "state", "rejections", "retry_at")

    def __init__(self, name: str, seq: int):
        self.name = name
        self.key = name.lower()
        self.seq = seq  # creation order: commands go out in first-subscribed order
        self.refs = 0
        self.state = SubState.PENDING
        self.rejections = 0
        self.retry_at = 0.0

    def __repr__(self) -> str:
        return f"Subscription({self.name!r}, refs={self.refs}, {self.state.value})"


@dataclass(frozen=True)
class ReplyOutcome:
    """What a reply to a subscription command meant, for the owner to log."""

    name: str
    refused: bool = False      # `-ERR …` to `event json`
    retry_gap: float = 0.0     # when refused: seconds before the next try
    gap_changed: bool = False  # when refused: first refusal, or the schedule stepped
    recovered: int = 0         # accepted after this many refusals
    unexpected: bool = False   # accepted with a reply that is not `+OK`


class Subscriptions:
    """The event names of one socket (see the module docstring)."""

    def __init__(self) -> None:
        self._subs: dict[str, Subscription] = {}
        self._by_key: dict[str, list[Subscription]] = {}  # lower-case name -> its spellings
        self._wanted: dict[str, int] = {}  # lower-case name -> spellings with refs > 0
        self._dirty: dict[str, None] = {}  # names whose wire state may have to change
        self._retries: list[tuple[float, int, str]] = []  # (retry_at, seq, name) of refused names
        self._seq = 0
        self.generation = 0  # bumped whenever the set of wanted names changes

    # -- references ---------------------------------------------------------

    def add(self, name: str) -> bool:
        """One more reference on `name`; True when its sum left 0 (the wire
        must change). ValueError for a name that cannot be sent."""
        event_command(name)  # validates: one line, not empty
        sub = self._subs.get(name)
        if sub is None:
            self._seq += 1
            sub = self._subs[name] = Subscription(name, self._seq)
            self._by_key.setdefault(sub.key, []).append(sub)
        sub.refs += 1
        if sub.refs != 1:
            return False
        self._wanted[sub.key] = self._wanted.get(sub.key, 0) + 1
        self._dirty[name] = None
        self.generation += 1
        return True

    def remove(self, name: str) -> bool | None:
        """One reference less on `name`: None if it had none, True when the
        sum returned to 0 (the wire must change), False otherwise."""
        sub = self._subs.get(name)
        if sub is None or sub.refs <= 0:
            return None
        sub.refs -= 1
        if sub.refs:
            return False
        left = self._wanted.get(sub.key, 1) - 1
        if left:
            self._wanted[sub.key] = left
        else:
            self._wanted.pop(sub.key, None)
        if sub.state is SubState.PENDING:
            self._forget(sub)  # not on the wire: nothing to undo
        else:
            self._dirty[name] = None
        self.generation += 1
        return True

    def refs(self, name: str) -> int:
        sub = self._subs.get(name)
        return sub.refs if sub else 0

    def wants(self, key: str) -> bool:
        """Is the lower-case event name `key` subscribed (any spelling)?"""
        return key in self._wanted

    def names(self) -> list[str]:
        """Names with a reference, first-subscribed order."""
        return [s.name for s in self._subs.values() if s.refs > 0]

    def split(self) -> tuple[list[str], list[str]]:
        """(accepted names, names not yet accepted), each first-subscribed order."""
        active: list[str] = []
        pending: list[str] = []
        for sub in self._subs.values():
            if sub.refs > 0:
                (active if sub.state is SubState.ACTIVE else pending).append(sub.name)
        return active, pending

    def settled(self) -> bool:
        """FreeSWITCH answered every name with a reference at least once."""
        return all(s.state is SubState.ACTIVE or (s.state is SubState.PENDING and s.rejections)
                   for s in self._subs.values() if s.refs > 0)

    def __len__(self) -> int:
        return len(self._subs)

    # -- the wire -------------------------------------------------------------

    def next_commands(self, now: float) -> list[tuple[Subscription, str]]:
        """The commands to send now, in first-subscribed order; each named
        subscription is marked as waiting for its reply."""
        retries = self._retries
        while retries and retries[0][0] <= now:
            _, _, name = heapq.heappop(retries)
            self._dirty[name] = None
        if not self._dirty:
            return []
        subs = self._subs
        changed = sorted((subs[name] for name in self._dirty if name in subs), key=_by_seq)
        self._dirty.clear()
        batch = []
        for sub in changed:
            state = sub.state
            if sub.refs > 0:
                if state is SubState.PENDING:
                    if sub.retry_at <= now:
                        sub.state = SubState.SENDING
                        batch.append((sub, event_command(sub.name)))
                    else:
                        heapq.heappush(retries, (sub.retry_at, sub.seq, sub.name))
            elif state is SubState.PENDING:
                self._forget(sub)  # never accepted: cancelled, nothing to undo
            elif state is SubState.ACTIVE:
                if self._other_spelling_on_wire(sub):
                    self._forget(sub)  # FreeSWITCH matches names case-insensitively
                else:
                    sub.state = SubState.NIXING
                    batch.append((sub, nixevent_command(sub.name)))
            # SENDING / NIXING: on_reply() decides once the reply is in
        return batch

    def on_reply(self, sub: Subscription, text: str, now: float) -> ReplyOutcome | None:
        """FreeSWITCH answered `sub`'s command with Reply-Text `text`. Returns
        what happened to an `event json`, None for a `nixevent`."""
        if sub.state is SubState.SENDING:
            if text.startswith("-ERR"):
                sub.state = SubState.PENDING
                sub.rejections += 1
                gap = rejected_retry_gap(sub.rejections)
                changed = sub.rejections == 1 or gap != rejected_retry_gap(sub.rejections - 1)
                if sub.refs == 0:
                    self._forget(sub)
                else:
                    sub.retry_at = now + gap
                    heapq.heappush(self._retries, (sub.retry_at, sub.seq, sub.name))
                return ReplyOutcome(sub.name, refused=True, retry_gap=gap, gap_changed=changed)
            recovered, sub.rejections = sub.rejections, 0
            sub.state = SubState.ACTIVE
            if sub.refs == 0:
                self._dirty[sub.name] = None  # unsubscribed while on its way: nixevent next
            return ReplyOutcome(sub.name, recovered=recovered, unexpected=not text.startswith("+OK"))
        if sub.state is SubState.NIXING:
            if sub.refs == 0:
                self._forget(sub)
            else:
                sub.state = SubState.PENDING  # wanted again while the nixevent was on its way
                sub.retry_at = 0.0
                self._dirty[sub.name] = None
        return None

    def next_retry(self, now: float) -> float | None:
        """Seconds until a refused name is due again; 0 when something is to
        send now; None when nothing is scheduled."""
        if self._dirty:
            return 0.0
        retries = self._retries
        while retries:
            retry_at, _, name = retries[0]
            sub = self._subs.get(name)
            if sub is not None and sub.refs > 0 and sub.state is SubState.PENDING and sub.retry_at == retry_at:
                return max(0.0, retry_at - now)
            heapq.heappop(retries)  # stale: cancelled, accepted or rescheduled since
        return None

    def connection_lost(self) -> None:
        """Nothing is subscribed on the wire any more: names without a
        reference go, every other one is to be sent again at once."""
        self._retries.clear()
        self._dirty.clear()
        for sub in list(self._subs.values()):
            if sub.refs == 0:
                self._forget(sub)
            else:
                sub.state = SubState.PENDING
                sub.retry_at = 0.0
                self._dirty[sub.name] = None

    # -- internals --------------------------------------------------------------

    def _forget(self, sub: Subscription) -> None:
        if self._subs.get(sub.name) is sub:
            del self._subs[sub.name]
        group = self._by_key.get(sub.key)
        if group is not None:
            if sub in group:
                group.remove(sub)
            if not group:
                del self._by_key[sub.key]

    def _other_spelling_on_wire(self, sub: Subscription) -> bool:
        return any(o is not sub and o.refs > 0 and o.state in (SubState.ACTIVE, SubState.SENDING)
                   for o in self._by_key.get(sub.key, ()))


def _by_seq(sub: Subscription) -> int:
    return sub.seq

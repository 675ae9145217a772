"""Publisher-confirm bookkeeping for one AMQP channel (sans-IO).

Supports RabbitMQ's publisher confirms (`confirm.select`): every message
published on the channel gets the next delivery tag (1, 2, …); the broker
answers `basic.ack` or `basic.nack` for one tag or, with `multiple`, for
every tag up to it. With `mandatory`, a message no queue takes comes back as
`basic.return` before its ack (a return carries no tag, so returns are
counted and charged to the next acks).

Goals: a message counts as sent only once confirmed; what was not confirmed
when the connection died is handed back, in publish order, to be published
again on the next connection (at-least-once: the broker may have taken some
of them already — each re-publish is a possible duplicate and is counted by
the caller). O(1) per publish and per confirmed message, whatever the
number outstanding.

Plan: an ordered map tag -> (payload, publish time); acks and nacks pop from
its front; `take_unconfirmed` empties it and restarts the tags at 1 (a new
channel numbers from 1 again).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["ConfirmLedger", "Confirmation", "Verdict"]


class Verdict(Enum):
    ACKED = "acked"
    NACKED = "nacked"


@dataclass
class Confirmation:
    """What one ack or nack settled."""

    verdict: Verdict
    delivered: int = 0           # acked and routed: count as sent
    returned: int = 0            # acked but unroutable (basic.return came first)
    resend: list = field(default_factory=list)   # nacked: payloads to publish again, in order


class ConfirmLedger:
    """Unconfirmed messages of the current channel (see module docstring)."""

    def __init__(self) -> None:
        self._unconfirmed: OrderedDict[int, tuple[object, float]] = OrderedDict()
        self._next_tag = 1
        self._pending_returns = 0

    def __len__(self) -> int:
        return len(self._unconfirmed)

    def published(self, payload: bytes, now: float) -> int:
        """Record a publish; returns its delivery tag."""
        tag = self._next_tag
        self._next_tag += 1
        self._unconfirmed[tag] = (payload, now)
        return tag

    def returned(self) -> None:
        """A `basic.return` arrived: the next acked message was unroutable."""
        self._pending_returns += 1

    def _settle(self, tag: int, multiple: bool) -> list:
        unconfirmed = self._unconfirmed
        if not multiple:
            entry = unconfirmed.pop(tag, None)
            return [] if entry is None else [entry[0]]
        settled = []
        while unconfirmed:
            first = next(iter(unconfirmed))
            if first > tag:
                break
            settled.append(unconfirmed.popitem(last=False)[1][0])
        return settled

    def acked(self, tag: int, multiple: bool) -> Confirmation:
        count = len(self._settle(tag, multiple))
        returned = min(count, self._pending_returns)
        self._pending_returns -= returned
        return Confirmation(Verdict.ACKED, delivered=count - returned, returned=returned)

    def nacked(self, tag: int, multiple: bool) -> Confirmation:
        return Confirmation(Verdict.NACKED, resend=self._settle(tag, multiple))

    def oldest_since(self) -> float | None:
        """Publish time of the oldest unconfirmed message (None: none)."""
        for _payload, since in self._unconfirmed.values():
            return since
        return None

    def take_unconfirmed(self) -> list:
        """The channel is gone: every unconfirmed payload, in publish order;
        the ledger starts over for the next channel."""
        payloads = [payload for payload, _since in self._unconfirmed.values()]
        self._unconfirmed.clear()
        self._next_tag = 1
        self._pending_returns = 0
        return payloads

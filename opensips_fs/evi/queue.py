"""Bounded notification queues: per destination by events and bytes, and a
byte budget shared by every queue of the process (sans-IO, no sockets).

Supports: `NotificationQueue`, the FIFO of one destination (any queued
transport uses it: datagram, stream, xmlrpc, http and the ones to come),
bounded by `max_events` and `max_bytes`; `QueueBudget`, the bytes queued in
the whole process, bounded by its `max_bytes`. Nothing is ever dropped
silently: every payload a queue lets go unsent goes through the queue's
`on_dropped(count)` callback (the destination counts and logs it).

Goals: `put` and `popleft` are O(1) on average (a few attribute updates
beyond the deque's own), so the relay hot path stays cheap; memory has a
ceiling we set, not the peers.

Plan: a queue over its own bounds drops its oldest payloads (the newest
events are the most useful). When the process budget is exhausted the
queue holding the most bytes drops its oldest ones first, so a subscriber
that stops reading fills only its own queue and the budget's slack, never
makes the others lose events while it holds the memory. A payload larger
than its queue's `max_bytes` is dropped at once.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

__all__ = ["NotificationQueue", "QueueBudget", "DEFAULT_QUEUE_BYTES", "DEFAULT_TOTAL_BYTES"]

DEFAULT_QUEUE_BYTES = 16 << 20      # per destination
DEFAULT_TOTAL_BYTES = 64 << 20      # every EVI queue of the process


def _ignore(count: int) -> None:
    pass


class QueueBudget:
    """The bytes queued by every `NotificationQueue` sharing this budget."""

    def __init__(self, max_bytes: int = DEFAULT_TOTAL_BYTES):
        self.max_bytes = max(1, int(max_bytes))
        self.used = 0
        self._queues: set[NotificationQueue] = set()

    def attach(self, queue: "NotificationQueue") -> None:
        self._queues.add(queue)

    def detach(self, queue: "NotificationQueue") -> None:
        self._queues.discard(queue)

    def make_room(self, size: int) -> None:
        """Drop the oldest payloads of the largest queues until `size` fits."""
        while self.used + size > self.max_bytes:
            victim = max(self._queues, key=lambda q: q.bytes, default=None)
            if victim is None or not victim.bytes:
                return
            victim.drop_oldest()


class NotificationQueue:
    """The FIFO of payloads (bytes) waiting for one destination."""

    __slots__ = ("max_events", "max_bytes", "bytes", "budget", "on_dropped", "_items",
                 "__weakref__")

    def __init__(self, max_events: int, max_bytes: int = DEFAULT_QUEUE_BYTES,
                 budget: QueueBudget | None = None,
                 on_dropped: Callable[[int], None] = _ignore):
        self.max_events = max(1, int(max_events))
        self.max_bytes = max(1, int(max_bytes))
        self.bytes = 0
        self.budget = budget if budget is not None else QueueBudget(self.max_bytes)
        self.budget.attach(self)
        self.on_dropped = on_dropped
        self._items: deque[bytes] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __getitem__(self, index: int) -> bytes:
        return self._items[index]

    def put(self, payload: bytes) -> None:
        """Append `payload`; over a bound, the oldest payloads are dropped."""
        size = len(payload)
        items = self._items
        if len(items) >= self.max_events or self.bytes + size > self.max_bytes:
            if size > self.max_bytes:
                self.on_dropped(1)
                return
            while items and (len(items) >= self.max_events
                             or self.bytes + size > self.max_bytes):
                self.drop_oldest()
        budget = self.budget
        if budget.used + size > budget.max_bytes:
            budget.make_room(size)
            if budget.used + size > budget.max_bytes:
                self.on_dropped(1)
                return
        items.append(payload)
        self.bytes += size
        budget.used += size

    def popleft(self) -> bytes:
        payload = self._items.popleft()
        size = len(payload)
        self.bytes -= size
        self.budget.used -= size
        return payload

    def drop_oldest(self) -> None:
        self.popleft()
        self.on_dropped(1)

    def clear(self) -> int:
        """Forget every payload (the caller counts them); return how many."""
        count = len(self._items)
        self.budget.used -= self.bytes
        self.bytes = 0
        self._items.clear()
        return count

    def close(self) -> int:
        """`clear()` and leave the budget."""
        count = self.clear()
        self.budget.detach(self)
        return count

"""Polling waits: a test waits for a condition, never for a fixed time.

The loop yields to the gevent hub between checks, so the code under test
(running in the same process) gets on while the test waits.
"""

from __future__ import annotations

import time
from typing import Callable, Literal, TypeVar

import gevent

T = TypeVar("T")


def wait_until(predicate: Callable[[], T | Literal[False] | None], timeout: float = 5.0, step: float = 0.005,
               what: str = "condition") -> T:
    """The first truthy value of ``predicate()``; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        gevent.sleep(step)


def assert_never(predicate: Callable[[], object], during: float, what: str = "it",
                 step: float = 0.01) -> None:
    """``predicate()`` stays false for ``during`` seconds.

    Proving that something did *not* happen needs a bound: ``during`` must be
    the interval of the code within which it would have happened (a tick, a
    retry gap, a timeout setting), named at the call site — never a bare
    number. Fails as soon as the predicate turns true."""
    deadline = time.monotonic() + during
    while True:
        if predicate():
            raise AssertionError(f"{what} happened (checked for {during} s)")
        if time.monotonic() >= deadline:
            return
        gevent.sleep(step)

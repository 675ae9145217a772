"""``short_reason(exc)``: the one way an exception becomes the short text
after "failed: " in a log line, a status field or a start-up error.

A timeout is "timed out"; an ``OSError`` with an operating-system message is
that message alone ("Connection refused", without errno or path: the caller
says what was being done to what); anything else is its text on one line, or
its class name when it has none.
"""

from __future__ import annotations

import gevent

__all__ = ["short_reason"]


def short_reason(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, gevent.Timeout)):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__

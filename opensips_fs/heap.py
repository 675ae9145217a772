"""Handing freed heap back to the operating system after a burst.

glibc keeps the memory Python frees for reuse, so after a burst of events
(queues, read buffers) the resident set stays at its peak. `trim()` calls
glibc's `malloc_trim(0)`, which returns the free pages to the OS; where
there is no such call (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["trim"]


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _find_malloc_trim()


def trim() -> bool:
    """Give freed heap back to the OS; True when something was released."""
    return bool(_malloc_trim(0)) if _malloc_trim is not None else False

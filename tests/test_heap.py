"""heap.trim: what it releases, seen from Python."""

import sys

from opensips_fs import heap


class _Watcher:
    def stop(self) -> None:
        pass


def test_trim_releases_the_names_the_attribute_cache_holds():
    # gevent's C code looks `stop` up with a new string each time a timer
    # fires; CPython's attribute cache keeps the last one per slot alive
    name = "".join(["st", "op"])  # a new string, not the interned "stop"
    assert name is not "stop"  # noqa: F632 - the point is a distinct object
    before = sys.getrefcount(name)
    getattr(_Watcher(), name)
    assert sys.getrefcount(name) == before + 1  # the cache holds it
    heap.trim()
    assert sys.getrefcount(name) == before

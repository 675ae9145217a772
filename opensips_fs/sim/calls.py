"""Simulated calls (placeholder engine: no routes yet)."""

from __future__ import annotations

__all__ = ["CallEngine"]


class CallEngine:
    def __init__(self, box):
        self.box = box
        self.channels = {}
        self.since_startup = 0
        self.peak = 0

    def stats(self) -> dict:
        return {"count": len(self.channels), "since_startup": self.since_startup, "peak": self.peak,
                "peak_5min": self.peak, "per_sec_last": 0, "max_per_sec": 30, "per_sec_peak": 0,
                "per_sec_5min": 0}

    def show_rows(self, what):
        return []

    def originate(self, url, target, wait=True, job=None):
        return "-ERR NO_ROUTE_DESTINATION\n"

    def kill(self, uuid, cause):
        return False

    def hupall(self, cause):
        return 0

    def exists(self, uuid):
        return uuid in self.channels

    def watch(self, uuid, client):
        pass

    def stop(self):
        pass

    def load_loop(self, cps):
        pass

"""Readiness (`GET /ready`): is the service doing the job it was configured for?

Ready when the configured database was loaded and the ESL sockets it and the
`fs_subscribe` modparams name are connected — all of them, or all but
`ready_max_down` (a `freeswitch_scripting` modparam). Sockets created only by
MI calls do not count: an operator's experiment must not take the service out
of a load balancer. `/health` stays the liveness probe (the event loop
answers); this one says whether traffic should be sent here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import orjson

if TYPE_CHECKING:
    from .mi.httpwire import HttpRequest
    from .scripting import Scripting

__all__ = ["Readiness"]


class Readiness:
    """`check()` -> (ready, reasons); `route(request)` -> the HTTP answer."""

    def __init__(self, scripting: Scripting | None, max_down: int = 0,
                 running: Callable[[], bool] = lambda: True):
        self.scripting = scripting
        self.max_down = max_down
        self.running = running

    def check(self) -> tuple[bool, list[str]]:
        reasons: list[str] = []
        if not self.running():
            reasons.append("the service is starting or stopping")
        scripting = self.scripting
        if scripting is None:
            return not reasons, reasons
        db = scripting.db_status()
        if db is not None and not db["loaded"]:
            reasons.append(f"database: table {db['table']} in {db['url']} not loaded yet: "
                           f"{db['last_error'] or 'loading'}")
        down = [s for s in scripting.startup_sockets() if not s.connected]
        if len(down) > self.max_down:
            for socket in down:
                status = socket.status()
                reasons.append(f"ESL {socket.name} not connected ({status['state']}): "
                               f"{status['last_error'] or 'connecting'}")
            reasons.append(f"{len(down)} of the sockets the DB and fs_subscribe modparams name "
                           f"are down (ready_max_down {self.max_down})")
        return not reasons, reasons

    def route(self, _request: HttpRequest) -> tuple[int, str, bytes]:
        ready, reasons = self.check()
        if ready:
            return 200, "application/json", b'{"status":"ready"}'
        return 503, "application/json", orjson.dumps({"status": "not ready", "reasons": reasons})

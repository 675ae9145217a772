"""The running service: builds every room from the config and wires them.

Start-up order (each room gets what the earlier ones built):

1. `Stats` — shared counters;
2. `esl.manager.EslManager` — only if ``freeswitch`` is loaded;
3. `evi.registry.EviRegistry` — with the loaded ``event_*`` transports;
4. `scripting.Scripting` — only if ``freeswitch_scripting`` is loaded (it
   sets the manager's event sink, loads the DB and the fs_subscribe params);
5. `mi.registry.MiRegistry` — core + statistics + EVI + scripting commands;
6. the MI transports: HTTP (``httpd`` + ``mi_http``), FIFO, datagram.

`stop()` stops what was started, in reverse order, and never raises. A room
that fails to start (a listener that cannot bind, a FIFO path that is not
writable…) makes `start()` stop what already runs and raise `StartupError`
with a message naming the address. `shutdown()` (MI `kill`, the signal
handlers) only asks the owner — the command line — to stop the app.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from gevent.event import Event

from . import __version__, logs
from . import url as fsurl
from .config import Config
from .esl.manager import EslManager
from .evi.registry import EviRegistry
from .metrics import MetricsPage
from .mi import StartupError
from .mi.registry import MiRegistry
from .mi.core import CoreContext, core_commands, statistics_commands
from .mi.datagram import MiDatagramServer
from .mi.fifo import MiFifoServer
from .mi.http import MiHttpServer
from .readiness import Readiness
from .reasons import short_reason
from .scripting import Scripting
from .stats import Stats

__all__ = ["App", "StartupError", "config_secrets"]

log = logging.getLogger(__name__)


class App:
    """opensips-fs as one object: ``App(config).start()`` … ``stop()``."""

    def __init__(self, config: Config, shutdown_requested: Event | None = None):
        self.config = config
        self.stats = Stats()
        self.started_at: float | None = None
        self.manager: EslManager | None = None
        self.evi: EviRegistry | None = None
        self.scripting: Scripting | None = None
        self.registry: MiRegistry | None = None
        self.context: CoreContext | None = None
        self.shutdown_requested = shutdown_requested or Event()
        self.transports: list[tuple[str, str, Any]] = []   # (what, address, server)
        self._running: list[tuple[str, Any]] = []          # (what, room), start order
        self._stopped = False
        self._up = False
        for secret in config_secrets(config):
            logs.register_secret(secret)

    # -- start

    def start(self) -> "App":
        """Build and start every room; raises `StartupError` (after stopping
        whatever had started) when one cannot start."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        cfg = self.config
        self.started_at = time.time()
        log.info("starting opensips-fs %s (config %s)", __version__, cfg.path)

        if cfg.freeswitch is not None:
            self.manager = EslManager(cfg.freeswitch, self.stats)
            self._start_room("ESL connection manager", self.manager)

        self.evi = EviRegistry(self.stats, cfg.evi_transports(), cfg.evi_queue_bytes)
        self._start_room("event interface", self.evi)

        if cfg.freeswitch_scripting is not None:     # the config made sure freeswitch is loaded
            assert self.manager is not None
            self.scripting = Scripting(cfg.freeswitch_scripting, self.manager, self.evi,
                                       self.stats, cfg.dir)
            self._start_room("freeswitch_scripting", self.scripting)

        self.readiness = Readiness(
            self.scripting, cfg.freeswitch_scripting.ready_max_down if cfg.freeswitch_scripting else 0,
            running=lambda: self._up and not self._stopped)
        registry = self.registry = MiRegistry(self.stats)
        self.context = CoreContext(
            started_at=self.started_at, stats=self.stats, processes=self.processes,
            get_log_level=logs.get_level, set_log_level=logs.set_level,
            registry=self.registry, shutdown=self.shutdown)
        self.registry.register(statistics_commands(self.stats))
        self.registry.register(core_commands(self.context))
        self.registry.register(self.evi.mi_commands())
        if self.scripting is not None:
            self.registry.register(self.scripting.mi_commands())

        if cfg.httpd is not None and cfg.mi_http is None:
            log.log(logs.NOTICE, "httpd is loaded without mi_http: no HTTP listener to start")
        if cfg.mi_http is not None:
            httpd, mi_http = cfg.httpd, cfg.mi_http
            assert httpd is not None  # the config loads mi_http only with httpd
            metrics = MetricsPage(self.stats, manager=self.manager, evi=self.evi, scripting=self.scripting,
                                  mi_calls=registry.calls, max_age=httpd.metrics_max_age / 1000)
            self._start_transport("MI HTTP", httpd.address, lambda: MiHttpServer(
                httpd, mi_http, registry, self.stats,
                extra_routes={"/ready": self.readiness.route}, metrics=metrics))
        mi_fifo, mi_datagram = cfg.mi_fifo, cfg.mi_datagram
        if mi_fifo is not None:
            self._start_transport("MI FIFO", mi_fifo.fifo_name, lambda: MiFifoServer(
                mi_fifo, registry, self.stats))
        if mi_datagram is not None:
            self._start_transport("MI datagram", mi_datagram.socket_name,
                                  lambda: MiDatagramServer(mi_datagram, registry, self.stats))

        self._up = True
        log.log(logs.NOTICE, "opensips-fs %s started: %s", __version__, ", ".join(
            f"{what} on {where}" for what, where, _ in self.transports) or "no MI listener")

    def _start_room(self, what: str, room: Any) -> None:
        try:
            room.start()
        except StartupError as exc:
            raise StartupError(f"cannot start the {what}: {exc}") from exc
        except Exception as exc:
            log.exception("cannot start the %s", what)
            raise StartupError(f"cannot start the {what}: {short_reason(exc)}") from exc
        self._running.append((what, room))

    def _start_transport(self, what: str, address: str, build: Callable[[], Any]) -> None:
        """Build and start one listener; any failure becomes a StartupError
        that names the address."""
        try:
            server = build()
            server.start()
        except Exception as exc:
            reason = short_reason(exc)
            if address in reason:
                raise StartupError(f"cannot start {what}: {reason}") from exc
            raise StartupError(f"cannot start {what} on {address}: {reason}") from exc
        bound = getattr(server, "address", None)
        if isinstance(bound, tuple) and len(bound) >= 2:
            address = f"{bound[0]}:{bound[1]}"     # the real port when configured as 0
        self.transports.append((what, address, server))
        self._running.append((f"{what} on {address}", server))

    def reload(self, why: str = "reload requested") -> bool:
        """Reload the `freeswitch` table as MI `fs_reload` does (SIGHUP);
        logs the outcome, never raises. False when nothing was reloaded."""
        if not self._up or self._stopped:
            log.warning("%s: the service is not running, nothing reloaded", why)
            return False
        if self.scripting is None or not self.scripting.has_db():
            log.log(logs.NOTICE, "%s: no freeswitch_scripting db_url, nothing to reload", why)
            return False
        log.log(logs.NOTICE, "%s: reloading the freeswitch table", why)
        try:
            self.scripting.reload()
        except Exception as exc:    # MiError: the reason is logged by reload itself
            log.error("%s: reload failed (%s), the old data set is kept", why, exc)
            return False
        return True

    def shutdown(self) -> None:
        """Ask the owner of the app (the command line) to stop it: what MI
        `kill` and the signal handlers call."""
        self.shutdown_requested.set()

    # -- what MI `ps` lists

    def processes(self) -> list[str]:
        """The logical workers, named like OpenSIPS's processes (MI `ps`)."""
        cfg = self.config
        names = ["attendant"]
        if cfg.freeswitch is not None:
            names.append("FS Manager")
        if cfg.event_stream is not None:
            names.append("event_stream Sender")
        if cfg.mi_http is not None:
            assert cfg.httpd is not None  # the config loads mi_http only with httpd
            bound = [where for what, where, _ in self.transports if what == "MI HTTP"]
            names.append(f"HTTPD {bound[0] if bound else cfg.httpd.address}")
        if cfg.mi_datagram is not None:
            names.append("MI Datagram")
        if cfg.mi_fifo is not None:
            names.append("MI FIFO")
        names += ["time_keeper", "timer"]
        return names

    # -- stop

    def stop(self) -> None:
        """Stop every started room in reverse order; never raises."""
        if self._stopped:
            return
        self._stopped = True
        while self._running:
            what, room = self._running.pop()
            try:
                room.stop()
            except Exception:
                log.exception("error while stopping the %s", what)
        self.transports.clear()
        if self._up:
            log.log(logs.NOTICE, "opensips-fs stopped")


def config_secrets(config: Config) -> list[str]:
    """The passwords written in the config, to be masked in every log line."""
    secrets = []
    if config.httpd is not None and config.httpd.auth_password:
        secrets.append(config.httpd.auth_password)
    scripting = config.freeswitch_scripting
    if scripting is not None:
        db_password = logs.url_password(scripting.db_url) if scripting.db_url else None
        if db_password:
            secrets.append(db_password)
        for param in scripting.fs_subscribe:
            password = fsurl.parse(param.url).password
            if password:
                secrets.append(password)
    return secrets

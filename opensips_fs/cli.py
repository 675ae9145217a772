"""The ``opensips-fs`` command (also ``python -m opensips_fs``).

    opensips-fs -f FILE            run in the foreground, logs on stderr
    opensips-fs -c -f FILE         check the config (and the DB driver / SQLite folder it
                                   needs): exit 0 if good, 1 (error on stderr) if not
    opensips-fs -l LEVEL -f FILE   override log_level (-3..4 or error/warning/notice/info/debug)
    opensips-fs --version | -V

SIGTERM and SIGINT stop the service cleanly (listeners and connections
closed, exit 0); SIGHUP runs `fs_reload` (the systemd unit's ExecReload).
A room that cannot start (an address in use, a FIFO path that is not
writable) ends the start with a message naming it, exit 1.

Only the standard library is imported at module level: gevent must patch it
(``monkey.patch_all()``, first thing in `main`) before any room is imported.
"""

from __future__ import annotations

import argparse
import gc
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported at run time only once main() has monkey-patched
    from gevent.event import Event

    from .config import Config

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
STOP_TIMEOUT = 10.0   # s to stop the rooms before exiting anyway


def _log_level(text: str) -> int:
    from .config import parse_log_level
    try:
        return parse_log_level(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(
        prog="opensips-fs",
        description="OpenSIPS's freeswitch + freeswitch_scripting modules as a standalone "
                    "service: ESL connections to FreeSWITCH, OpenSIPS MI, E_FREESWITCH events.")
    parser.add_argument("-f", dest="config", metavar="FILE", required=True,
                        help="configuration file (OpenSIPS cfg subset)")
    parser.add_argument("-c", dest="check", action="store_true",
                        help="check the configuration file and exit (0: ok, 1: error)")
    parser.add_argument("-l", dest="log_level", metavar="LEVEL", type=_log_level,
                        help="log level, overrides log_level: -3..4 or "
                             "error, warning, notice, info, debug")
    parser.add_argument("-E", dest="stderror", action="store_true",
                        help="log to stderr (overrides log_stderror=no)")
    parser.add_argument("-V", "--version", action="version",
                        version=f"opensips-fs {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    from gevent import monkey
    monkey.patch_all()

    import signal

    import gevent
    from gevent.event import Event

    # Handlers first: a SIGTERM that arrives while the rooms are still being
    # imported or started must still end in a clean stop and exit 0.
    stop_requested = Event()
    signals_seen: list[str] = []

    def on_signal(signum: int) -> None:
        signals_seen.append(signal.Signals(signum).name)
        stop_requested.set()

    running: list = []      # the App, once built: what SIGHUP reloads

    def on_hangup(signum: int) -> None:
        for app in running:
            gevent.spawn(app.reload, "SIGHUP")

    handlers = [gevent.signal_handler(signum, on_signal, signum)
                for signum in (signal.SIGTERM, signal.SIGINT)]
    handlers.append(gevent.signal_handler(signal.SIGHUP, on_hangup, signal.SIGHUP))
    try:
        return _run(argv, stop_requested, signals_seen, running)
    finally:
        for handler in handlers:
            handler.cancel()


def _run(argv: list[str] | None, stop_requested: Event, signals_seen: list[str], running: list) -> int:
    import logging

    import gevent

    from . import config as cfgmod
    from . import logs
    from .app import App, StartupError

    args = build_parser().parse_args(argv)
    try:
        config = cfgmod.load(args.config)
    except cfgmod.ConfigError as exc:
        print(f"{exc}", file=sys.stderr)
        return EXIT_FAILURE

    level = config.log_level if args.log_level is None else args.log_level
    logs.setup(level, config.log_stderror or args.stderror or args.check,
               stderror_format=config.stderror_log_format,
               syslog_format=config.syslog_log_format)
    log = logging.getLogger("opensips_fs.cli")
    for note in config.notes:
        log.log(logs.NOTICE, "%s", note)
    if args.check:
        problem = _local_problem(config)
        if problem:
            print(f"{config.path}: {problem}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"{config.path}: config file ok, exiting...", file=sys.stderr)
        return EXIT_OK

    app = App(config, shutdown_requested=stop_requested)
    running.append(app)
    try:
        app.start()
        # What start-up built lives as long as the process: keep it out of
        # the collector's full passes (-7 % CPU per MI request under load).
        gc.freeze()
    except StartupError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except Exception:
        log.exception("start-up failed")
        app.stop()
        return EXIT_FAILURE
    while not stop_requested.wait(timeout=1.0):
        pass    # a timed wait keeps the hub alive: signal watchers do not
    log.log(logs.NOTICE, "%s, stopping",
            f"{signals_seen[0]} received" if signals_seen else "shutdown requested")
    stopper = gevent.spawn(app.stop)
    stopper.join(timeout=STOP_TIMEOUT)
    if not stopper.ready():
        log.error("rooms did not stop within %.0f s, exiting anyway", STOP_TIMEOUT)
        stopper.kill(block=False)
        return EXIT_FAILURE
    return EXIT_OK


def _local_problem(config: Config) -> str | None:
    """What the config needs from this host and does not find (no network):
    the database driver, the SQLite file's folder."""
    from .db import DbError, check_db_url
    scripting = config.freeswitch_scripting
    if scripting is None or not scripting.db_url:
        return None
    try:
        check_db_url(scripting.db_url, config.dir)
    except DbError as exc:
        return str(exc)
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

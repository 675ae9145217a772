"""`freeswitch_scripting`: which FreeSWITCH sockets and events the service
follows, and ESL commands on demand (docs/protocols/scripting.md).

The `fs_list` set is a list of *entries* (newest first), each naming one ESL
socket and its events (newest first for MI and modparam additions, CSV order
for DB rows). Every entry holds one reference on its socket and one reference
per listed event; the ESL manager turns the reference sums into connections
and `event json` / `nixevent` commands. `SubscriptionSet` is that list as pure
data (no I/O), `Scripting` applies its changes to the manager's sockets and
answers the MI commands:

* `fs_subscribe` / `fs_unsubscribe` / `fs_list`: OpenSIPS's replies and
  errors, with one [EMU] rule on top: a rejected call changes nothing (no
  half-made entry, no credential change, no socket created).
* `fs_reload`: the whole set is replaced by the DB rows, atomically: the rows
  are read first (off the hub, `db.py`), the new references are taken, then
  the sets are swapped and the old references released, so events that stay
  subscribed cause no wire traffic. A row without password, ip or events is
  skipped with a warning naming its id; a table that cannot be read keeps the
  old set and answers `500 Internal Error`.
* `freeswitch_esl` [OURS]: runs one ESL command on any socket and returns the
  api body or the Reply-Text (docs/protocols/scripting.md §7.2).
* `fs_status` [OURS]: the manager's view of each socket, and the database's
  state (`db_status`).

A table that cannot be read at start-up (server down, network not up yet) is
no reason to run empty for good: the first load is retried with backoff (1 s,
doubling, at most `DB_RETRY_MAX`) until it succeeds or an `fs_reload` does
it; the rows it brings are added *below* what MI calls and `fs_subscribe`
modparams subscribed meanwhile — the order they would have had with the
database up at start. A driver that is not installed, or an SQLite folder
that cannot be created, stops the start-up instead (nothing to wait for).
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

import gevent
import gevent.lock

from . import jsonenc
from . import url as fsurl
from .config import ScriptingSettings
from .db import BadRow, DbError, FsDatabase, row_subscription
from .esl.connection import EslError, EslLoginRefused, EslReplyTooLarge, EslTimeout
from .esl.manager import EslNoPassword, EslTooManySockets
from .esl.protocol import CommandTextError, breaks_line, command_text
from .logs import NOTICE
from .mi import StartupError
from .mi.commands import MiCommand, MiError, Params

if TYPE_CHECKING:
    from .esl.manager import EslManager
    from .esl.socket import EslSocket
    from .evi.registry import EviRegistry
    from .stats import Stats

__all__ = ["MAX_COMMAND_BYTES", "Entry", "Scripting", "SubscriptionSet", "normalize_command"]

log = logging.getLogger("opensips_fs.scripting")

MODULE = "freeswitch_scripting"
MAX_COMMAND_BYTES = ScriptingSettings.esl_cmd_max_size

DB_RETRY_FIRST = 1.0     # s before the first retry of a failed start-up load
DB_RETRY_MAX = 30.0      # s, the longest gap between two retries

INTERNAL_ERROR = (500, "Internal Error")
NO_DB = (-32000, "Server error", "Command handler returned null")


def internal_error() -> MiError:
    return MiError(*INTERNAL_ERROR)


# ----------------------------------------------------------------- the model

# the socket type: opaque to the bookkeeping (an EslSocket in the service)
S = TypeVar("S")


class Entry(Generic[S]):
    """One `fs_list` line: a socket and its events, display order."""

    __slots__ = ("socket", "events")

    def __init__(self, socket: S, events: Iterable[str] = ()):
        self.socket = socket
        self.events: list[str] = list(events)

    def __repr__(self) -> str:
        return f"Entry({_socket_name(self.socket)}, {self.events!r})"


class SubscriptionSet(Generic[S]):
    """The ordered entries. Pure bookkeeping: the caller applies the returned
    changes (references, subscriptions) to the sockets. Once the set is in
    use, entries change only through `add` and `remove` (`as_list` keeps its
    answer until they do)."""

    def __init__(self, entries: Iterable[Entry[S]] | None = None):
        self.entries: list[Entry[S]] = list(entries or [])
        self._listing: dict | None = None
        self._listing_json: object = None

    def first(self, socket: S) -> Entry[S] | None:
        """The newest entry of `socket` (MI calls only ever touch that one)."""
        for entry in self.entries:
            if entry.socket is socket:
                return entry
        return None

    def sockets(self) -> list[S]:
        seen, out = set(), []
        for entry in self.entries:
            if id(entry.socket) not in seen:
                seen.add(id(entry.socket))
                out.append(entry.socket)
        return out

    def add(self, socket: S, names: Iterable[str]) -> tuple[bool, list[str]]:
        """Subscribe `names` on the socket's first entry, creating (prepending)
        the entry if there is none. Empty names and names already in the entry
        are skipped; each new name is prepended. Returns (entry created, names
        added in order of arrival)."""
        self._listing = self._listing_json = None
        entry = self.first(socket)
        created = entry is None
        if entry is None:
            entry = Entry(socket)
            self.entries.insert(0, entry)
        added = []
        for name in names:
            if name and name not in entry.events:
                entry.events.insert(0, name)
                added.append(name)
        return created, added

    def remove(self, socket: S, names: Iterable[str]) -> tuple[bool, list[str]]:
        """Unsubscribe `names` from the socket's first entry. An entry left
        without events leaves the set (also one that had none, as soon as a
        non-empty name is given). Returns (entry removed, names removed)."""
        self._listing = self._listing_json = None
        entry = self.first(socket)
        if entry is None:
            return False, []
        wanted = [name for name in names if name]
        removed = []
        for name in wanted:
            if name in entry.events:
                entry.events.remove(name)
                removed.append(name)
        dropped = bool(wanted) and not entry.events
        if dropped:
            self.entries.remove(entry)
        return dropped, removed

    def extend(self, entries: Iterable[Entry[S]]) -> None:
        """Add `entries` after the current ones (the DB loaded late)."""
        self._listing = self._listing_json = None
        self.entries.extend(entries)

    def as_list(self) -> dict:
        """`fs_list`'s result. Built once per change of the set (polled by
        many clients): the caller must not modify it."""
        if self._listing is None:
            self._listing = {"Sockets": [{"if": _socket_name(e.socket), "Events": list(e.events)}
                                         for e in self.entries]}
        return self._listing

    def as_list_json(self) -> object:
        """`as_list()` already encoded (`jsonenc.encoded`), once per change."""
        if self._listing_json is None:
            self._listing_json = jsonenc.encoded(self.as_list())
        return self._listing_json


def _socket_name(socket: object) -> str:
    return getattr(socket, "name", None) or str(socket)


def normalize_command(text: str, max_bytes: int = MAX_COMMAND_BYTES) -> str:
    """The command text to send (``protocol.command_text``), or `MiError`
    400 with OpenSIPS's texts: empty, over `max_bytes`, or holding an empty
    line (which would end this command and smuggle in another one)."""
    try:
        return command_text(text, max_bytes)
    except CommandTextError as exc:
        raise MiError(400, _COMMAND_ERRORS[exc.kind]) from None


_COMMAND_ERRORS = {"empty": "Empty ESL command", "too long": "ESL command too long",
                   "empty line": "Bad ESL command"}


# -------------------------------------------------------------- the service

class Scripting:
    """The freeswitch_scripting module: MI commands, modparams, DB reloads."""

    def __init__(self, settings: ScriptingSettings, manager: EslManager, evi: EviRegistry | None, stats: Stats,
                 cfg_dir: str | None = None):
        self.settings = settings
        self.manager = manager
        self.evi = evi
        self.stats = stats
        self.max_command_bytes = settings.esl_cmd_max_size
        db_timeout = settings.db_timeout / 1000.0
        self.set: SubscriptionSet[EslSocket] = SubscriptionSet()
        self.db = None
        if settings.db_url:
            self.db = FsDatabase(
                settings.db_url, cfg_dir, table=settings.db_table,
                col_username=settings.db_col_username, col_password=settings.db_col_password,
                col_ip=settings.db_col_ip, col_port=settings.db_col_port,
                col_events=settings.db_col_events, timeout=db_timeout)
        self._reload_lock = gevent.lock.Semaphore()
        self._raise = evi.raise_freeswitch if evi is not None else _no_evi
        # the database's state, for fs_status, /ready and the metrics
        self.db_loaded = False
        self.db_last_load: float | None = None       # time of the last successful load
        self.db_last_error: str | None = None
        self.db_start_attempts = 0
        self._db_retry_at: float | None = None       # monotonic time of the next retry
        self._retrier: gevent.Greenlet | None = None
        group = MODULE
        self._reloads = stats.counter(group, "db_reloads", "loads of the freeswitch table (start-up and fs_reload)")
        self._reload_failures = stats.counter(group, "db_reload_failures", "failed loads of the freeswitch table")
        self._rows_skipped = stats.counter(group, "db_rows_skipped", "table rows skipped as invalid")
        self._esl_commands = stats.counter(group, "esl_commands", "freeswitch_esl commands run")
        self._esl_failures = stats.counter(group, "esl_command_failures", "freeswitch_esl commands that failed")
        stats.gauge(group, "fs_list_entries", lambda: len(self.set.entries),
                    "socket subscriptions in the fs_list set now")
        if self.db is not None:
            stats.gauge(group, "db_loaded", lambda: int(self.db_loaded),
                        "1 once the freeswitch table was loaded, else 0")

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        if self.db is not None:
            try:
                self.db.check_local()
            except DbError as exc:
                raise StartupError(str(exc)) from None
        self.manager.event_sink = self.on_event
        if self.db is not None and not self._start_load():
            self._retrier = gevent.spawn(self._retry_start_load)
        for param in self.settings.fs_subscribe:
            try:
                self.subscribe_modparam(param.url)
            except (fsurl.UrlError, ValueError) as exc:
                log.error("%s:%s: fs_subscribe ignored: %s", param.file, param.line, exc)

    def stop(self) -> None:
        if self._retrier is not None:
            self._retrier.kill()
            self._retrier = None
        if self.manager.event_sink == self.on_event:
            self.manager.event_sink = None
        old, self.set = self.set, SubscriptionSet()
        self._release(old.entries)

    def on_event(self, socket: EslSocket, name: str, body: bytes) -> None:
        """Called by the ESL reader for each subscribed event: raise E_FREESWITCH."""
        self._raise(name, socket.host, body)

    # -- subscriptions ----------------------------------------------------

    def subscribe_modparam(self, url: str) -> None:
        """One `fs_subscribe` modparam: like an MI subscribe, events from `?`."""
        parsed = fsurl.parse(url)
        if not parsed.password:
            raise ValueError(f"fs_subscribe URL {parsed.key} has no password")
        if _multiline(parsed.events):
            raise ValueError("fs_subscribe URL has an event name on several lines")
        socket = self._socket(parsed, limited=False)
        self._subscribe(socket, parsed, parsed.events)

    def subscribe(self, url_text: str, params_events: Callable[[], list[str]]) -> str:
        parsed, socket = self._resolve(url_text)
        events = params_events()  # typed read: may raise, nothing changed yet
        if _multiline(events):
            # it would end the `event json` command and start another one
            raise MiError(400, "Bad event name")
        if socket is None:
            socket = self._socket(parsed)
        self._subscribe(socket, parsed, events)
        return "OK"

    def _subscribe(self, socket: EslSocket, parsed: fsurl.FsUrl, events: Iterable[str]) -> None:
        changed = self._update_credentials(socket, parsed)
        created, added = self.set.add(socket, events)
        if created:
            socket.ref()
        for name in added:
            socket.subscribe(name)
        if changed:
            socket.wait_attempt()  # corrected credentials: answer once they were tried

    def unsubscribe(self, url_text: str, params_events: Callable[[], list[str]]) -> str:
        parsed, socket = self._resolve(url_text)
        if socket is None or self.set.first(socket) is None:
            # [OS] answer OK before even reading the events; [EMU] never create
            # a socket for an unsubscribe
            if socket is not None:
                self._update_credentials(socket, parsed)
            return "OK"
        events = params_events()
        self._update_credentials(socket, parsed)
        dropped, removed = self.set.remove(socket, events)
        for name in removed:
            socket.unsubscribe(name)
        if dropped:
            socket.unref()
        return "OK"

    def list(self) -> dict:
        return self.set.as_list()

    # -- reload -------------------------------------------------------------

    def reload(self) -> str:
        """MI `fs_reload`: replace the whole set with the table's rows."""
        if self.db is None:
            raise MiError(*NO_DB)
        with self._reload_lock:
            self._load(replace=True)
        return "OK"

    def _start_load(self) -> bool:
        """The start-up load (also each of its retries): the rows go below
        the current entries. False (logged, counted) when it failed."""
        db = self.db
        if db is None:
            return True
        self.db_start_attempts += 1
        try:
            with self._reload_lock:
                if self.db_loaded:      # an fs_reload got there first
                    return True
                if db.engine == "sqlite":
                    db.ensure_schema()
                self._load(replace=False)
            return True
        except DbError as exc:          # ensure_schema
            self._reload_failures.value += 1
            self.db_last_error = str(exc)
        except MiError:                 # _load logged and counted it
            pass
        return False

    def _retry_start_load(self) -> None:
        delay = DB_RETRY_FIRST
        log.error("initial load of table %s failed, running without DB subscriptions "
                  "and retrying (every %g s at most): %s", self.settings.db_table,
                  DB_RETRY_MAX, self.db_last_error)
        while not self.db_loaded:
            self._db_retry_at = time.monotonic() + delay
            gevent.sleep(delay)
            self._db_retry_at = None
            if self._start_load():
                break
            delay = min(delay * 2, DB_RETRY_MAX)
            log.warning("table %s still cannot be loaded (attempt %d, next in %g s): %s",
                        self.settings.db_table, self.db_start_attempts, delay,
                        self.db_last_error)
        log.log(NOTICE, "table %s loaded after %d attempt(s)", self.settings.db_table,
                self.db_start_attempts)
        self._retrier = None

    def _load(self, replace: bool) -> None:
        """Read the table and apply its rows (caller holds the reload lock):
        `replace` swaps the whole set (fs_reload), else the rows are added
        below the current entries (the start-up load)."""
        db = self.db
        if db is None:
            raise MiError(*NO_DB)
        self._reloads.value += 1
        try:
            rows = db.load()
        except DbError as exc:
            self._reload_failures.value += 1
            self.db_last_error = str(exc)
            if replace:
                log.error("failed to reload DB data, keeping old data set: %s", exc)
            raise MiError(*INTERNAL_ERROR, reason=f"table not reloaded: {exc}") from None
        subs = []
        for row in rows:
            try:
                subs.append(row_subscription(row, db.columns))
            except BadRow as exc:
                self._rows_skipped.value += 1
                log.warning("table %s: row id %s skipped: %s", self.settings.db_table,
                            row.id, exc)
        if not rows and replace:
            log.info("table %s is empty, clearing all sockets", self.settings.db_table)
        new: SubscriptionSet[EslSocket] = SubscriptionSet()
        try:
            for sub in subs:
                socket = self.manager.find(sub.host, sub.port)
                if socket is None:
                    socket = self.manager.get(sub.host, sub.port, sub.username, sub.password)
                entry = Entry(socket, _unique(sub.events))
                new.entries.insert(0, entry)
                self._acquire(entry)
        except Exception:
            log.exception("reload aborted, keeping old data set")
            self._release(new.entries)
            self._reload_failures.value += 1
            self.db_last_error = "reload aborted (see the log)"
            raise internal_error() from None
        # nothing yields from here on: credentials (used from the next
        # connection attempt), swap and release happen as one step
        for sub, entry in zip(subs, reversed(new.entries)):
            entry.socket.update_credentials(sub.username, sub.password, from_db=True)
        if replace:
            self._release_rowless_sockets(new)
            old, self.set = self.set, new
            self._release(old.entries)
        else:
            self.set.extend(new.entries)
        self.db_loaded = True
        self.db_last_load = time.time()
        self.db_last_error = None
        log.info("loaded %d socket subscription(s) from table %s", len(new.entries),
                 self.settings.db_table)

    def _release_rowless_sockets(self, new: SubscriptionSet) -> None:
        """Sockets a DB row provisioned whose row is gone: MI URLs set their
        credentials again (one kept open by freeswitch_esl included)."""
        named = {id(entry.socket) for entry in new.entries}
        for socket in self.manager.sockets():
            if socket.db_provisioned and id(socket) not in named:
                socket.release_db_provisioning()

    def startup_sockets(self) -> builtins.list[EslSocket]:
        """The sockets the DB rows and the fs_subscribe modparams name (what
        /ready waits for), creation order."""
        keys = set()
        for param in self.settings.fs_subscribe:
            try:
                parsed = fsurl.parse(param.url)
            except fsurl.UrlError:
                continue
            keys.add((parsed.host, parsed.port))
        return [s for s in self.manager.sockets()
                if s.db_provisioned or (s.host, s.port) in keys]

    def has_db(self) -> bool:
        """True when a db_url is configured (fs_reload has a table to read)."""
        return self.db is not None

    def db_status(self) -> dict | None:
        """The database's state (None without db_url): what fs_status shows."""
        if self.db is None:
            return None
        retry = self._db_retry_at
        return {
            "url": self.db.masked(),
            "table": self.settings.db_table,
            "loaded": self.db_loaded,
            "last_load": self.db_last_load,
            "last_error": self.db_last_error,
            "start_attempts": self.db_start_attempts,
            "next_retry_in": None if retry is None else round(max(0.0, retry - time.monotonic()), 3),
        }

    @staticmethod
    def _acquire(entry: Entry) -> None:
        entry.socket.ref()
        for name in entry.events:
            entry.socket.subscribe(name)

    @staticmethod
    def _release(entries: Iterable[Entry]) -> None:
        for entry in entries:
            for name in entry.events:
                entry.socket.unsubscribe(name)
            entry.socket.unref()

    # -- freeswitch_esl -------------------------------------------------------

    def esl(self, command: str, url_text: str) -> str:
        text = normalize_command(command, self.max_command_bytes)
        parsed, socket = self._resolve(url_text)
        if socket is None:
            socket = self._socket(parsed)
        else:
            self._update_credentials(socket, parsed)
        self._esl_commands.value += 1
        try:
            reply = socket.command(text)
        except EslTimeout:
            self._esl_failures.value += 1
            raise MiError(504, "ESL command timeout") from None
        except EslLoginRefused as exc:
            self._esl_failures.value += 1
            raise MiError(503, "FreeSWITCH refused the login",
                          reason=f"freeswitch_esl on {socket.name}: {exc}") from None
        except EslReplyTooLarge as exc:
            self._esl_failures.value += 1
            raise MiError(500, "ESL reply too large",
                          reason=f"freeswitch_esl on {socket.name}: {exc}") from None
        except EslError as exc:  # not connected, lost while waiting, socket closed
            self._esl_failures.value += 1
            raise MiError(503, "FreeSWITCH not connected",
                          reason=f"freeswitch_esl on {socket.name}: {exc}") from None
        if reply.content_type == "api/response":
            return (reply.body or b"").decode("utf-8", "surrogateescape")
        return reply.reply_text or ""

    # -- fs_status ------------------------------------------------------------

    def status(self, url_text: str | None = None) -> dict:
        if url_text is None:
            reply: dict = {"Sockets": [s.status() for s in self.manager.sockets()]}
            if self.db is not None:
                reply["Database"] = self.db_status()
            return reply
        parsed = _parse_url(url_text, "fs_status")
        socket = self.manager.find(parsed.host, parsed.port)
        if socket is None:
            raise MiError(404, "Socket not found")
        return {"Sockets": [socket.status()]}

    # -- sockets ----------------------------------------------------------------

    def _resolve(self, url_text: str) -> tuple[fsurl.FsUrl, EslSocket | None]:
        """Parse the URL and find its socket without creating anything:
        (parsed, socket or None). A bad URL, or an unknown socket without a
        password, is `500 Internal Error` (docs/protocols/scripting.md §2.3, §4 step 2)."""
        parsed = _parse_url(url_text, "failed to parse FS URL")
        socket = self.manager.find(parsed.host, parsed.port)
        if socket is None and not parsed.password:
            raise MiError(*INTERNAL_ERROR, reason=f"refusing to connect to FS {parsed.key} "
                          "without a password (a new socket needs one in the URL)")
        return parsed, socket

    def _socket(self, parsed: fsurl.FsUrl, limited: bool = True) -> EslSocket:
        """The URL's socket, created if needed — within `esl_max_sockets`
        when `limited` (MI calls; not the modparams)."""
        socket = self.manager.find(parsed.host, parsed.port)
        if socket is not None:
            return socket
        try:
            return self.manager.get(parsed.host, parsed.port, parsed.username, parsed.password,
                                    limited=limited)
        except EslNoPassword:
            raise MiError(*INTERNAL_ERROR, reason=f"refusing to connect to FS {parsed.key} "
                          "without a password") from None
        except EslTooManySockets as exc:
            raise MiError(500, "Too many FreeSWITCH sockets",
                          reason=f"refusing to create the ESL socket {parsed.key}: {exc}") from None

    @staticmethod
    def _update_credentials(socket: EslSocket, parsed: fsurl.FsUrl) -> bool:
        """docs/protocols/scripting.md §2.3: a URL naming a socket that is not DB-provisioned sets
        its username (cleared if none) and, when given, its password. True if
        they changed (a failing socket then tries them at once)."""
        if socket.db_provisioned:
            return False
        return socket.update_credentials(parsed.username, parsed.password)

    # -- MI -------------------------------------------------------------------

    def mi_commands(self) -> builtins.list[MiCommand]:  # `list` is a method here
        def subscribe(params: Params) -> str:
            return self.subscribe(params.string("freeswitch_url"),
                                  lambda: params.strings("events"))

        def unsubscribe(params: Params) -> str:
            return self.unsubscribe(params.string("freeswitch_url"),
                                    lambda: params.strings("events"))

        def esl(params: Params) -> object:
            # both strings are read first: bad types are -32602 before anything runs
            command = params.string("command")
            return self.esl(command, params.string("freeswitch_url"))

        def status(params: Params) -> object:
            if "freeswitch_url" in params:
                return self.status(params.string("freeswitch_url"))
            return self.status()

        return [
            MiCommand(MODULE, "subscribe", "fs_subscribe", [["freeswitch_url", "events"]],
                      subscribe, "subscribes FreeSWITCH events on an ESL socket, raised as "
                      "E_FREESWITCH (the socket is created with the URL's password)"),
            MiCommand(MODULE, "unsubscribe", "fs_unsubscribe", [["freeswitch_url", "events"]],
                      unsubscribe, "unsubscribes FreeSWITCH events from an ESL socket (its last "
                      "event closes the connection)"),
            MiCommand(MODULE, "list", "fs_list", [[]], lambda params: self.set.as_list_json(),
                      "lists the ESL sockets and the events subscribed on each, newest first"),
            MiCommand(MODULE, "reload", "fs_reload", [[]], lambda params: self.reload(),
                      "replaces every subscription with the rows of the freeswitch table"),
            MiCommand(MODULE, "esl", "freeswitch_esl", [["command", "freeswitch_url"]], esl,
                      "runs an ESL command on a FreeSWITCH server and returns its reply"),
            MiCommand(MODULE, "status", "fs_status", [[], ["freeswitch_url"]], status,
                      "shows the state and counters of each ESL socket and of the database"),
        ]


def _parse_url(url_text: str, what: str) -> fsurl.FsUrl:
    """The parsed URL; a malformed one is logged (`what: reason`) and is
    `500 Internal Error`, as OpenSIPS answers."""
    try:
        return fsurl.parse(url_text)
    except fsurl.UrlError as exc:
        raise MiError(*INTERNAL_ERROR, reason=f"{what}: {exc}") from None


def _multiline(names: Iterable[str]) -> bool:
    return any(breaks_line(name) for name in names)


def _no_evi(name: str, sender: str, body: bytes) -> None:
    """No event interface in this build: events have nowhere to go."""


def _unique(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if name not in out:
            out.append(name)
    return out

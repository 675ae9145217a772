"""The `freeswitch` table: where `fs_reload` reads its sockets (docs/protocols/scripting.md §6, §12).

`FsDatabase` turns an OpenSIPS `db_url` (parsed by `dburl.py`) into a peewee
database, checks the `version` row of the table (it must be 1, as OpenSIPS
checks it) and reads the rows with the configured table and column names, in
primary-key order.

No driver call ever runs on the gevent hub's time: SQLite (a C library that
blocks) runs in the hub's thread pool; MySQL/MariaDB goes through pymysql,
which is pure Python and cooperative once `socket` is patched (otherwise the
thread pool again); PostgreSQL goes through psycopg2 with psycogreen's gevent
wait callback (the standard way), or the thread pool when psycogreen is
missing. Every call is bounded by `timeout` seconds (driver timeouts, plus a
gevent timeout around the cooperative ones), so a slow or dead server gives a
`DbError` instead of a stalled service.

`check_local(db_url)` checks what can be checked without the network (what
`opensips-fs -c` and the start-up run): the driver of the scheme imports
(the error names the pip extra that installs it) and an SQLite file's folder
exists or can be created.

`row_subscription(row)` validates one row the way opensips-fs loads it: a row
without password, ip or events is refused with `BadRow` (OpenSIPS aborts the
whole reload there; we skip the row), empty CSV fields are dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gevent
import peewee

from .dburl import DbUrl, DbUrlError, parse_db_url
from .esl.protocol import breaks_line
from .reasons import short_reason
from .url import DEFAULT_PORT

__all__ = ["TABLE_VERSION", "BadRow", "DbError", "DbVersionError", "FsDatabase",
           "FsRow", "RowSubscription", "check_db_url", "check_local", "row_subscription"]

log = logging.getLogger("opensips_fs.db")

_T = TypeVar("_T")

TABLE_VERSION = 1
_CSV_TRIM = " \t\r\n"


class DbError(Exception):
    """The table cannot be read: server down, missing table, query error..."""


class DbVersionError(DbError):
    """The `version` row of the table is missing or is not 1."""


class BadRow(ValueError):
    """A row that cannot become a subscription (says which column)."""


@dataclass(frozen=True)
class FsRow:
    """One row of the `freeswitch` table, as the driver returned it."""

    id: int | None
    username: str | None
    password: str | None
    ip: str | None
    port: int | None
    events_csv: str | None

    def __repr__(self) -> str:  # never show the password
        return (f"FsRow(id={self.id!r}, username={self.username!r}, ip={self.ip!r}, "
                f"port={self.port!r}, events_csv={self.events_csv!r})")


@dataclass(frozen=True)
class RowSubscription:
    """A valid row: the socket it names and the events it wants, CSV order."""

    row_id: int | None
    host: str
    port: int
    username: str | None
    password: str
    events: tuple[str, ...]

    def __repr__(self) -> str:
        return f"RowSubscription(id={self.row_id!r}, {self.host}:{self.port}, events={self.events!r})"


def row_subscription(row: FsRow, columns: dict[str, str] | None = None) -> RowSubscription:
    """Validate one row (docs/protocols/scripting.md §6.1 step 6, [EMU] §6.2/§6.3); raise `BadRow`."""
    names = columns or {}

    def col(key: str) -> str:
        return names.get(key, key)

    if not row.password:
        raise BadRow(f"value in column {col('password')} cannot be {_empty_or_null(row.password)}")
    ip = row.ip  # the host string, verbatim (docs/protocols/scripting.md §2.2)
    if ip is None or not str(ip).strip():
        raise BadRow(f"value in column {col('ip')} cannot be {_empty_or_null(row.ip)}")
    if row.events_csv is None or row.events_csv == "":
        raise BadRow(f"value in column {col('events')} cannot be {_empty_or_null(row.events_csv)}")
    events = tuple(field for field in (f.strip(_CSV_TRIM) for f in str(row.events_csv).split(","))
                   if field)
    if not events:
        raise BadRow(f"value in column {col('events')} has no event name: {row.events_csv!r}")
    if any(breaks_line(name) for name in events):
        raise BadRow(f"value in column {col('events')} has an event name on several lines")
    try:
        port = int(row.port) if row.port is not None else 0
    except (TypeError, ValueError):
        raise BadRow(f"value in column {col('port')} is not a port number: {row.port!r}") from None
    if not 0 <= port <= 65535:
        raise BadRow(f"value in column {col('port')} is out of range: {port}")
    return RowSubscription(row_id=row.id, host=str(ip), port=port or DEFAULT_PORT,
                           username=row.username or None, password=str(row.password),
                           events=events)


def _empty_or_null(value: object) -> str:
    return "null" if value is None else "empty"


# ------------------------------------------------------ checks without network

# engine -> (driver modules tried in order, the pip extra that installs one)
_DRIVERS = {"mysql": (("pymysql", "MySQLdb"), "mysql"), "postgres": (("psycopg2",), "postgres")}


def check_local(url: DbUrl) -> None:
    """Raise `DbError` when `url` cannot work on this host whatever the
    network does: its driver does not import, or (SQLite) the file is a
    folder or its folder can be neither found nor created."""
    if url.engine == "sqlite":
        _check_sqlite_path(url.database)
        return
    modules, extra = _DRIVERS[url.engine]
    problems = []
    for module in modules:
        try:
            __import__(module)
            return
        except ImportError as exc:
            problems.append(f"{module}: {exc}")
    raise DbError(f"db_url {url.masked()} needs the {modules[0]} driver, which cannot be "
                  f"imported ({'; '.join(problems)}): pip install 'opensips-fs[{extra}]'")


def check_db_url(db_url: str, base_dir: str | None = None) -> None:
    """`check_local` on an OpenSIPS db_url (raises `DbError`)."""
    check_local(_parse(db_url, base_dir))


def _parse(db_url: str, base_dir: str | None) -> DbUrl:
    try:
        return parse_db_url(db_url, base_dir)
    except DbUrlError as exc:
        raise DbError(str(exc)) from None


def _check_sqlite_path(path: str) -> None:
    if os.path.isdir(path):
        raise DbError(f"db_url sqlite://{path}: {path} is a folder, not a database file")
    folder = os.path.dirname(path) or "."
    existing = folder
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise DbError(f"db_url sqlite://{path}: cannot create folder {folder}: "
                      f"{existing} is not a folder")
    if os.path.exists(path):
        if not os.access(path, os.R_OK | os.W_OK):
            raise DbError(f"db_url sqlite://{path}: the file is not readable and writable")
        return
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "create the database file in" if existing == folder else f"create folder {folder} in"
        raise DbError(f"db_url sqlite://{path}: cannot {what} {existing}: permission denied")


# ------------------------------------------------------------------ database

_psycogreen_done = False


def _cooperative_postgres() -> bool:
    """Install psycogreen's gevent wait callback once; False if unavailable."""
    global _psycogreen_done
    if not _psycogreen_done:
        try:
            from psycogreen.gevent import patch_psycopg
        except ImportError:
            return False
        patch_psycopg()
        _psycogreen_done = True
    return True


def _socket_patched() -> bool:
    from gevent import monkey
    return monkey.is_module_patched("socket")


class FsDatabase:
    """Reads the `freeswitch` table named by `db_url` (one connection per read)."""

    def __init__(self, db_url: str, base_dir: str | None = None, table: str = "freeswitch",
                 col_username: str = "username", col_password: str = "password",
                 col_ip: str = "ip", col_port: str = "port", col_events: str = "events_csv",
                 timeout: float = 10.0):
        self.url = _parse(db_url, base_dir)
        self.table = table
        self.columns = {"username": col_username, "password": col_password, "ip": col_ip,
                        "port": col_port, "events": col_events}
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"FsDatabase({self.url.masked()!r}, table={self.table!r})"

    @property
    def engine(self) -> str:
        return self.url.engine

    def masked(self) -> str:
        """The URL for logs and status replies (password masked)."""
        return self.url.masked()

    def check_local(self) -> None:
        """`check_local` on this database's URL (raises `DbError`)."""
        check_local(self.url)

    # -- public API -------------------------------------------------------

    def load(self) -> list[FsRow]:
        """Check the version row, then read every row (primary-key order)."""
        return self._run(self._load_blocking, "read")

    def ensure_schema(self) -> bool:
        """Create the SQLite file, `version` table, data table and version row.

        Only for an embedded SQLite DB and only what is missing: an existing
        data table is left alone (a wrong version row stays wrong). Returns
        True when the data table was created.
        """
        if self.url.engine != "sqlite":
            return False
        return self._run(self._ensure_schema_blocking, "create the schema of")

    # -- running driver calls off the hub ---------------------------------

    def _run(self, func: Callable[[], _T], what: str) -> _T:
        try:
            if self._cooperative():
                with gevent.Timeout(self.timeout, DbError(
                        f"no answer from {self.url.masked()} within {self.timeout:g} s")):
                    return func()
            ok, value = gevent.get_hub().threadpool.apply(_capture, (func,))
            if not ok:
                raise value
            return value
        except DbError:
            raise
        except (peewee.PeeweeException, OSError, ValueError) as exc:
            raise DbError(f"cannot {what} table {self.table!r} in {self.url.masked()}: "
                          f"{short_reason(exc)}") from None
        except Exception as exc:  # driver-specific errors (pymysql/psycopg2) not wrapped by peewee
            raise DbError(f"cannot {what} table {self.table!r} in {self.url.masked()}: "
                          f"{type(exc).__name__}: {short_reason(exc)}") from None

    def _cooperative(self) -> bool:
        if self.url.engine == "mysql":
            return _socket_patched()
        if self.url.engine == "postgres":
            return _cooperative_postgres()
        return False

    def _database(self) -> peewee.Database:
        u, t = self.url, max(1, int(self.timeout + 0.999))
        if u.engine == "sqlite":
            return peewee.SqliteDatabase(u.database, timeout=self.timeout)
        if u.engine == "mysql":
            return peewee.MySQLDatabase(u.database, host=u.host, port=u.port or 3306, user=u.user,
                                        password=u.password or "", connect_timeout=t,
                                        read_timeout=t, write_timeout=t, charset="utf8mb4")
        return peewee.PostgresqlDatabase(u.database, host=u.host, port=u.port or 5432,
                                         user=u.user, password=u.password, connect_timeout=t,
                                         options=f"-c statement_timeout={t * 1000}")

    def _models(self, db: peewee.Database, with_id: bool) -> tuple[Any, Any]:
        """The version and freeswitch table models (built here: their fields are unknown to mypy)."""
        class Version(peewee.Model):
            table_name = peewee.CharField(max_length=32)
            table_version = peewee.IntegerField(default=0)

            class Meta:
                database = db
                table_name = "version"
                primary_key = False

        cols = self.columns
        fields: dict[str, object] = {
            "username": peewee.BareField(column_name=cols["username"], null=True),
            "password": peewee.BareField(column_name=cols["password"], null=True),
            "ip": peewee.BareField(column_name=cols["ip"], null=True),
            "port": peewee.BareField(column_name=cols["port"], null=True),
            "events": peewee.BareField(column_name=cols["events"], null=True),
        }
        meta = {"database": db, "table_name": self.table}
        if with_id:
            fields["id"] = peewee.IntegerField(column_name="id", primary_key=True)
        else:
            meta["primary_key"] = False
        fields["Meta"] = type("Meta", (), meta)
        return Version, type("FsTable", (peewee.Model,), fields)

    # -- blocking bodies (run in a pool thread or a cooperative greenlet) --

    def _load_blocking(self) -> list[FsRow]:
        db = self._database()
        try:
            db.connect()
            version_model, _ = self._models(db, False)
            found = list(version_model.select(version_model.table_version)
                         .where(version_model.table_name == self.table).limit(1).tuples())
            if not found:
                raise DbVersionError(f"{self.table!r} record not found in 'version' table, "
                                     f"expected version {TABLE_VERSION}")
            version = found[0][0]
            if _as_int(version) != TABLE_VERSION:
                raise DbVersionError(f"invalid version {version} for table {self.table!r} found, "
                                     f"expected {TABLE_VERSION}")
            column_names = {c.name.lower() for c in db.get_columns(self.table)}
            with_id = "id" in column_names
            _, table = self._models(db, with_id)
            query = table.select(*([table.id] if with_id else []), table.username, table.password,
                                 table.ip, table.port, table.events)
            if with_id:
                query = query.order_by(table.id)
            rows = []
            for n, values in enumerate(query.tuples(), start=1):
                if not with_id:
                    values = (n, *values)
                rid, username, password, ip, port, events = values
                rows.append(FsRow(_as_int(rid), _text(username), _text(password), _text(ip),
                                  _as_int(port) if port is not None else None, _text(events)))
            return rows
        finally:
            _close_quietly(db)

    def _ensure_schema_blocking(self) -> bool:
        parent = os.path.dirname(self.url.database)
        if parent:
            os.makedirs(parent, exist_ok=True)
        db = self._database()
        try:
            db.connect()
            if self.table in db.get_tables():
                return False
            q = _quote_sqlite
            c = self.columns
            with db.atomic():
                db.execute_sql(
                    "CREATE TABLE IF NOT EXISTS version (table_name CHAR(32) NOT NULL, "
                    "table_version INTEGER DEFAULT 0 NOT NULL, "
                    "CONSTRAINT version_t_name_idx UNIQUE (table_name))")
                db.execute_sql(
                    f"CREATE TABLE {q(self.table)} (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
                    f"{q(c['username'])} CHAR(64), {q(c['password'])} CHAR(64) NOT NULL, "
                    f"{q(c['ip'])} CHAR(20) NOT NULL, {q(c['port'])} INTEGER DEFAULT 8021 NOT NULL, "
                    f"{q(c['events'])} CHAR(255))")
                db.execute_sql("INSERT OR IGNORE INTO version (table_name, table_version) "
                               "VALUES (?, ?)", (self.table, TABLE_VERSION))
            log.info("created table %s (version %d) in %s", self.table, TABLE_VERSION,
                     self.url.masked())
            return True
        finally:
            _close_quietly(db)


def _capture(func: Callable[[], object]) -> tuple[bool, Any]:
    """Run `func` in a pool thread and hand its exception back as a value
    (the pool would print it to stderr as an unhandled error)."""
    try:
        return True, func()
    except Exception as exc:  # re-raised in the calling greenlet
        return False, exc


def _quote_sqlite(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _as_int(value: Any) -> Any:
    """A driver's value as an int when it reads as one, else as the driver gave it."""
    if value is None or isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _close_quietly(db: peewee.Database) -> None:
    try:
        db.close()
    except Exception:  # the connection may be dead already: nothing to release
        pass

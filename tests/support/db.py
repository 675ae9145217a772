"""Throw-away databases for the DB tests: a fresh database on SQLite,
PostgreSQL or MariaDB (the servers `.ci/start-db` starts; URLs in
OPENSIPS_FS_TEST_POSTGRES / OPENSIPS_FS_TEST_MYSQL, with its printed defaults
when unset), created from the shipped `sql/<engine>.sql` script and dropped
afterwards, plus a raw DB-API connection to it. A server that cannot be
reached skips the test with the reason, except under CI=true where that is a
failure."""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, NoReturn, TypedDict

import gevent
import pytest

from opensips_fs.db import FsDatabase
from opensips_fs.dburl import parse_db_url
from support.ci import in_ci

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_URLS = {
    "postgres": "postgres://opensips:opensipsrw@127.0.0.1:5432/opensips_fs_test",
    "mysql": "mysql://opensips:opensipsrw@127.0.0.1:3306/opensips_fs_test",
}
ENV_VARS = {"postgres": "OPENSIPS_FS_TEST_POSTGRES", "mysql": "OPENSIPS_FS_TEST_MYSQL"}
ENGINES = ["sqlite", "postgres", "mysql"]


class Columns(TypedDict):
    """The column-name keywords of FsDatabase."""

    col_username: str
    col_password: str
    col_ip: str
    col_port: str
    col_events: str


CUSTOM_COLUMNS: Columns = {"col_username": "fs_user", "col_password": "fs_secret", "col_ip": "fs_host",
                           "col_port": "fs_port", "col_events": "fs_events"}


def server_url(engine: str) -> str:
    return os.environ.get(ENV_VARS[engine]) or DEFAULT_URLS[engine]


def unavailable(engine: str, exc: Exception) -> NoReturn:
    reason = (f"{engine} server at {parse_db_url(server_url(engine)).masked()} unreachable "
              f"({type(exc).__name__}: {exc}); run .ci/start-db")
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def sql_statements(script: str) -> list[str]:
    text = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def table_ddl(engine: str, table: str, cols: Columns) -> str:
    """The freeswitch table with custom names and the OpenSIPS types (docs/protocols/scripting.md §12)."""
    u, p, i, o, e = (cols["col_username"], cols["col_password"], cols["col_ip"], cols["col_port"],
                     cols["col_events"])
    if engine == "sqlite":
        return (f"CREATE TABLE {table} (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
                f"{u} CHAR(64), {p} CHAR(64) NOT NULL, {i} CHAR(20) NOT NULL, "
                f"{o} INTEGER DEFAULT 8021 NOT NULL, {e} CHAR(255))")
    if engine == "mysql":
        return (f"CREATE TABLE {table} (id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL, "
                f"{u} CHAR(64), {p} CHAR(64) NOT NULL, {i} CHAR(20) NOT NULL, "
                f"{o} INT(11) DEFAULT 8021 NOT NULL, {e} CHAR(255)) ENGINE=InnoDB")
    return (f"CREATE TABLE {table} (id SERIAL PRIMARY KEY NOT NULL, {u} VARCHAR(64), "
            f"{p} VARCHAR(64) NOT NULL, {i} VARCHAR(20) NOT NULL, "
            f"{o} INTEGER DEFAULT 8021 NOT NULL, {e} VARCHAR(255))")


class EngineDb:
    """A fresh database on one engine, plus a raw DB-API connection to it."""

    def __init__(self, engine: str, tmp_path: Path):
        self.engine = engine
        self.name = f"opensips_fs_test_{uuid.uuid4().hex[:10]}"
        if engine == "sqlite":
            path = tmp_path / f"{self.name}.db"
            self.url = f"sqlite://{path}"
            self.conn: Any = sqlite3.connect(path, isolation_level=None)  # or the driver's: see connect()
            self.placeholder = "?"
            return
        base = parse_db_url(server_url(engine))
        self.base = base
        self.placeholder = "%s"
        try:
            admin = self.connect(base.database)
        except Exception as exc:  # noqa: BLE001 - any driver error means "no server"
            unavailable(engine, exc)
        try:
            admin.cursor().execute(f"CREATE DATABASE {self.name}")
        finally:
            admin.close()
        port = f":{base.port}" if base.port else ""
        self.url = f"{engine}://{base.user}:{base.password}@{base.host}{port}/{self.name}"
        self.conn = self.connect(self.name)

    def connect(self, database: str) -> Any:
        """A DB-API connection of the engine's driver (psycopg2 or pymysql)."""
        b = self.base
        if self.engine == "postgres":
            import psycopg2
            conn = psycopg2.connect(host=b.host, port=b.port or 5432, user=b.user,
                                    password=b.password, dbname=database, connect_timeout=3)
            conn.autocommit = True
            return conn
        import pymysql
        return pymysql.connect(host=b.host, port=b.port or 3306, user=b.user, password=b.password or "",
                               database=database, autocommit=True, connect_timeout=3)

    def execute(self, sql: str, params: tuple | list = ()) -> Any:
        cur = self.conn.cursor()
        cur.execute(sql.replace("?", self.placeholder), params)
        return cur

    def run_script(self, name: str | None = None) -> None:
        for statement in sql_statements((ROOT / "sql" / f"{name or self.engine}.sql").read_text()):
            self.execute(statement)

    def insert(self, table: str, rows: list[tuple], cols: dict[str, str] | None = None) -> None:
        c = cols or {"col_username": "username", "col_password": "password", "col_ip": "ip",
                     "col_port": "port", "col_events": "events_csv"}
        names = ", ".join(c[k] for k in ("col_username", "col_password", "col_ip", "col_port",
                                         "col_events"))
        for row in rows:
            self.execute(f"INSERT INTO {table} ({names}) VALUES (?, ?, ?, ?, ?)", row)

    def set_version(self, table: str, version: int | None) -> None:
        self.execute("DELETE FROM version WHERE table_name = ?", (table,))
        if version is not None:
            self.execute("INSERT INTO version (table_name, table_version) VALUES (?, ?)",
                         (table, version))

    def fs_database(self, **kwargs: Any) -> FsDatabase:
        return FsDatabase(self.url, **kwargs)

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass
        if self.engine == "sqlite":
            return
        admin = self.connect(self.base.database)
        try:
            force = " WITH (FORCE)" if self.engine == "postgres" else ""
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {self.name}{force}")
        finally:
            admin.close()


def lock_table(db: EngineDb, table: str = "freeswitch") -> None:
    """Lock the data table from the raw connection: readers wait."""
    if db.engine == "postgres":
        db.conn.autocommit = False
        db.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    else:
        db.execute(f"LOCK TABLES {table} WRITE")


def find_waiter(db: EngineDb) -> int:
    """The id of the server-side connection that waits on the lock."""
    if db.engine == "postgres":
        query = ("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                 "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
    else:
        query = ("SELECT id FROM information_schema.processlist WHERE db = %s "
                 "AND state LIKE 'Waiting for table%%' AND id <> CONNECTION_ID()")
    watcher = db.connect(db.name)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cur = watcher.cursor()
            cur.execute(query, (db.name,))
            found = cur.fetchall()
            if found:
                return found[0][0]
            gevent.sleep(0.05)
        raise AssertionError("the reload never waited on the lock")
    finally:
        watcher.close()


def kill_connection(db: EngineDb, server_id: int) -> None:
    killer = db.connect(db.name)
    try:
        killer.cursor().execute(
            "SELECT pg_terminate_backend(%s)" if db.engine == "postgres" else "KILL %s",
            (server_id,))
    finally:
        killer.close()


def unlock_table(db: EngineDb) -> None:
    if db.engine == "postgres":
        db.conn.rollback()
        db.conn.autocommit = True
    else:
        db.execute("UNLOCK TABLES")


def standard_db(engine_db: EngineDb) -> EngineDb:
    """The shipped script and three rows (a NULL user, an empty one, a host name; spaced CSV)."""
    engine_db.run_script()
    engine_db.insert("freeswitch", [
        (None, "ClueCon", "127.0.0.1", 8022, "CHANNEL_CREATE,CHANNEL_DESTROY"),
        ("", "ClueCon", "127.0.0.1", 8021, "DTMF"),
        ("admin", "ClueCon", "localhost", 0, " TALK , NOTALK "),
    ])
    return engine_db

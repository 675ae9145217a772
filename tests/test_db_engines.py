"""FsDatabase against real SQLite, PostgreSQL and MariaDB servers.

Each test works in a database of its own (tests/support/db.py: created from
the shipped `sql/<engine>.sql` script and dropped afterwards). A server that
cannot be reached skips its tests with the reason, except under CI=true where
that is a failure.
"""

from __future__ import annotations

import sqlite3
import time

import gevent
import pytest

from opensips_fs.db import BadRow, DbError, DbVersionError, FsDatabase, FsRow
from opensips_fs.dburl import DbUrlError, parse_db_url
from support.db import (CUSTOM_COLUMNS, ENGINES, EngineDb, find_waiter, kill_connection, lock_table,
                        standard_db, table_ddl, unlock_table)


@pytest.fixture(params=ENGINES)
def engine_db(request, tmp_path):
    db = EngineDb(request.param, tmp_path)
    yield db
    db.close()


# ------------------------------------------------------------------ reading

@pytest.mark.timeout(30)
def test_shipped_script_creates_a_table_fs_database_reads(engine_db):
    db = standard_db(engine_db).fs_database()
    rows = db.load()
    assert [r.id for r in rows] == [1, 2, 3]
    assert rows[0] == FsRow(1, None, "ClueCon", "127.0.0.1", 8022, "CHANNEL_CREATE,CHANNEL_DESTROY")
    assert rows[1].username == "" and rows[1].port == 8021 and rows[1].events_csv == "DTMF"
    assert rows[2].username == "admin" and rows[2].ip == "localhost" and rows[2].port == 0


@pytest.mark.timeout(30)
def test_rows_come_in_primary_key_order(engine_db):
    db = standard_db(engine_db)
    db.execute("UPDATE freeswitch SET events_csv = ? WHERE id = 1", ("HEARTBEAT",))
    db.execute("DELETE FROM freeswitch WHERE id = 2")
    db.insert("freeswitch", [(None, "ClueCon", "127.0.0.1", 8023, "DTMF")])
    # (MySQL CHAR columns drop trailing spaces on read)
    assert [(r.id, (r.events_csv or "").rstrip()) for r in db.fs_database().load()] == [
        (1, "HEARTBEAT"), (3, " TALK , NOTALK"), (4, "DTMF")]


@pytest.mark.timeout(30)
def test_custom_table_and_column_names(engine_db):
    engine_db.run_script()
    engine_db.execute(table_ddl(engine_db.engine, "fs_sockets", CUSTOM_COLUMNS))
    engine_db.set_version("fs_sockets", 1)
    engine_db.insert("fs_sockets", [("u1", "pw", "10.0.0.1", 8021, "DTMF"),
                                    (None, "pw2", "10.0.0.2", 9000, "TALK,NOTALK")],
                     CUSTOM_COLUMNS)
    rows = engine_db.fs_database(table="fs_sockets", **CUSTOM_COLUMNS).load()
    assert [(r.username, r.password, r.ip, r.port, r.events_csv) for r in rows] == [
        ("u1", "pw", "10.0.0.1", 8021, "DTMF"), (None, "pw2", "10.0.0.2", 9000, "TALK,NOTALK")]
    # the standard names do not exist in that table: a clear error
    with pytest.raises(DbError, match="fs_sockets"):
        engine_db.fs_database(table="fs_sockets").load()


@pytest.mark.timeout(30)
def test_empty_table_gives_no_rows(engine_db):
    engine_db.run_script()
    assert engine_db.fs_database().load() == []


# ------------------------------------------------------------ version check

@pytest.mark.timeout(30)
def test_wrong_version_row_is_refused(engine_db):
    db = standard_db(engine_db)
    db.set_version("freeswitch", 2)
    with pytest.raises(DbVersionError, match="invalid version 2 for table 'freeswitch'"):
        db.fs_database().load()


@pytest.mark.timeout(30)
def test_missing_version_row_is_refused(engine_db):
    db = standard_db(engine_db)
    db.set_version("freeswitch", None)
    with pytest.raises(DbVersionError, match="record not found in 'version' table"):
        db.fs_database().load()


@pytest.mark.timeout(30)
def test_version_row_is_keyed_by_the_configured_table(engine_db):
    db = standard_db(engine_db)
    # the row says 1 for "freeswitch" but the configured table is "other"
    with pytest.raises(DbVersionError, match="'other'"):
        db.fs_database(table="other").load()


@pytest.mark.timeout(30)
def test_missing_data_table_is_an_error(engine_db):
    db = standard_db(engine_db)
    db.execute("DROP TABLE freeswitch")
    with pytest.raises(DbError) as err:
        db.fs_database().load()
    assert not isinstance(err.value, DbVersionError)
    assert "freeswitch" in str(err.value)


@pytest.mark.timeout(30)
def test_missing_version_table_is_an_error(engine_db):
    db = standard_db(engine_db)
    db.execute("DROP TABLE version")
    with pytest.raises(DbError, match="freeswitch"):
        db.fs_database().load()


# ----------------------------------------------------- failures, not stalls

def _tick(ticks: list[None]) -> None:
    """A greenlet that notes each 10 ms it gets to run (the hub is not blocked)."""
    for _ in range(100000):
        gevent.sleep(0.01)
        ticks.append(None)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_connection_killed_mid_read_is_an_error_and_the_hub_keeps_running(engine, tmp_path):
    db = EngineDb(engine, tmp_path)
    try:
        standard_db(db)
        fs_db = db.fs_database()
        ticks: list[None] = []
        ticker = gevent.spawn(_tick, ticks)
        lock_table(db)
        reader = gevent.spawn(fs_db.load)
        waiter = find_waiter(db)
        ticks_while_blocked = len(ticks)
        gevent.sleep(0.2)
        assert len(ticks) > ticks_while_blocked + 5, "the hub stalled while the DB was locked"
        assert not reader.ready()
        kill_connection(db, waiter)
        reader.join(10)
        ticker.kill()
        assert reader.ready() and isinstance(reader.exception, DbError)
        assert "opensipsrw" not in str(reader.exception)
        assert "***" in str(reader.exception)
        unlock_table(db)
        # the server is fine for the next read
        assert len(fs_db.load()) == 3
    finally:
        db.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_locked_table_times_out_with_a_clear_error(engine, tmp_path):
    db = EngineDb(engine, tmp_path)
    try:
        standard_db(db)
        fs_db = db.fs_database(timeout=1)
        lock_table(db)
        reader = gevent.spawn(fs_db.load)
        find_waiter(db)
        t0 = time.monotonic()
        reader.join(10)
        assert reader.ready() and isinstance(reader.exception, DbError)
        assert time.monotonic() - t0 < 5
        unlock_table(db)
    finally:
        db.close()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("scheme", ["postgres", "mysql"])
def test_unreachable_server_is_a_quick_clear_error(scheme):
    import socket
    with socket.socket() as s:  # bound, never listening: refused, and nobody else gets the port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        db = FsDatabase(f"{scheme}://u:secretpw@127.0.0.1:{port}/x", timeout=3)
        t0 = time.monotonic()
        with pytest.raises(DbError) as err:
            db.load()
        assert time.monotonic() - t0 < 3
    assert "secretpw" not in str(err.value) and f"127.0.0.1:{port}" in str(err.value)


@pytest.mark.timeout(10)
def test_sqlite_read_runs_off_the_hub(tmp_path):
    db = EngineDb("sqlite", tmp_path)
    standard_db(db)
    db.execute("BEGIN EXCLUSIVE")  # readers wait on the busy timeout
    fs_db = db.fs_database(timeout=1)
    ticks: list[None] = []
    ticker = gevent.spawn(_tick, ticks)
    reader = gevent.spawn(fs_db.load)
    gevent.sleep(0.5)
    assert len(ticks) > 20, "the hub stalled during a blocked sqlite read"
    reader.join(5)
    ticker.kill()
    assert isinstance(reader.exception, DbError) and "locked" in str(reader.exception)
    db.execute("COMMIT")
    assert len(fs_db.load()) == 3
    db.close()


# ------------------------------------------------------------ sqlite schema

def test_ensure_schema_creates_the_embedded_sqlite_db(tmp_path):
    db = FsDatabase("sqlite://state/fs.db", base_dir=str(tmp_path))
    assert db.ensure_schema() is True
    assert db.load() == []
    conn = sqlite3.connect(tmp_path / "state" / "fs.db")
    assert conn.execute("SELECT table_name, table_version FROM version").fetchall() == [
        ("freeswitch", 1)]
    conn.execute("INSERT INTO freeswitch (password, ip, events_csv) VALUES ('pw', 'h', 'DTMF')")
    conn.commit()
    assert db.ensure_schema() is False  # already there: untouched
    assert [(r.ip, r.port) for r in db.load()] == [("h", 8021)]


def test_ensure_schema_uses_custom_names_and_leaves_existing_tables_alone(tmp_path):
    path = tmp_path / "fs.db"
    db = FsDatabase(f"sqlite://{path}", table="fs_sockets", **CUSTOM_COLUMNS)
    assert db.ensure_schema() is True
    conn = sqlite3.connect(path)
    cols = [c[1] for c in conn.execute("PRAGMA table_info(fs_sockets)")]
    assert cols == ["id", "fs_user", "fs_secret", "fs_host", "fs_port", "fs_events"]
    conn.execute("UPDATE version SET table_version = 3")
    conn.commit()
    assert db.ensure_schema() is False
    with pytest.raises(DbVersionError):
        db.load()


def test_ensure_schema_is_only_for_sqlite():
    assert FsDatabase("mysql://u:p@127.0.0.1/x").ensure_schema() is False


# ------------------------------------------------------------ URLs and rows

@pytest.mark.parametrize("url, expected", [
    ("sqlite:///var/lib/fs.db", ("sqlite", "/var/lib/fs.db", None, None, None, None)),
    ("sqlite://rel/fs.db", ("sqlite", "/cfg/rel/fs.db", None, None, None, None)),
    ("mysql://user:pass@db.example:3307/opensips",
     ("mysql", "opensips", "db.example", 3307, "user", "pass")),
    ("mysql://user:p@ss:w@127.0.0.1/opensips",
     ("mysql", "opensips", "127.0.0.1", None, "user", "p@ss:w")),
    ("postgres://u:p@h/db", ("postgres", "db", "h", None, "u", "p")),
    ("postgresql://u@h:5433/db", ("postgres", "db", "h", 5433, "u", None)),
])
def test_parse_db_url(url, expected):
    u = parse_db_url(url, "/cfg")
    assert (u.engine, u.database, u.host, u.port, u.user, u.password) == expected


@pytest.mark.parametrize("url, message", [
    ("oracle://u:p@h/db", "unsupported db_url"),
    ("fs.db", "unsupported db_url"),
    ("sqlite://", "names no file"),
    ("mysql://u:p@h", "names no database"),
    ("mysql://u:p@h/", "names no database"),
    ("mysql://u:p@:3306/db", "names no host"),
    ("postgres://u:p@h:port/db", "bad port"),
    ("postgres://u:p@h:70000/db", "bad port"),
    ("postgres://u:p@h:３３/db", "bad port"),  # non-ASCII digits
    ("sqlite:///", "names no file"),
])
def test_bad_db_urls_are_clear_errors_without_password(url, message):
    with pytest.raises(DbUrlError, match=message) as err:
        parse_db_url(url)
    assert ":p@" not in str(err.value)
    with pytest.raises(DbError, match=message) as db_err:
        FsDatabase(url)
    assert ":p@" not in str(db_err.value)


def test_masked_url_hides_the_password():
    assert repr(FsDatabase("mysql://opensips:s3cret@127.0.0.1:3306/x")) == (
        "FsDatabase('mysql://opensips:***@127.0.0.1:3306/x', table='freeswitch')")


def test_fs_row_repr_hides_the_password():
    assert "s3cret" not in repr(FsRow(1, "u", "s3cret", "h", 1, "DTMF"))


def test_bad_row_exception_is_a_value_error():
    assert issubclass(BadRow, ValueError)

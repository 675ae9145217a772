"""fs_reload and the start-up load against SQLite, PostgreSQL and MariaDB
(servers from `.ci/start-db`), with custom table and column names: rows load
in reverse row order, bad rows are skipped, a wrong version row or a server
connection killed mid-reload answers 500 and keeps the old set, and while a
reload waits on the DB the MI and the ESL sockets keep working."""

from __future__ import annotations

import json
import socket

import gevent
import pytest

from support.db import (CUSTOM_COLUMNS, ENGINES, EngineDb, find_waiter, kill_connection, lock_table,
                        table_ddl, unlock_table)
from support.stack import Stack, stack_factory

TABLE = "fs_sockets"


def db_params(db: EngineDb) -> str:
    lines = [f'modparam("freeswitch_scripting", "db_url", "{db.url}")',
             f'modparam("freeswitch_scripting", "db_table", "{TABLE}")']
    lines += [f'modparam("freeswitch_scripting", "db_{key}", "{value}")'
              for key, value in CUSTOM_COLUMNS.items()]
    return "\n".join(lines)


@pytest.fixture
def engine_db(request, tmp_path):
    db = EngineDb(request.param, tmp_path)
    db.run_script()
    db.execute(table_ddl(db.engine, TABLE, CUSTOM_COLUMNS))
    db.set_version(TABLE, 1)
    yield db
    db.close()


@pytest.fixture
def stacks(tmp_path):
    yield from stack_factory(tmp_path)


def fs_list(stack: Stack) -> list:
    return stack.mi("fs_list")["result"]["Sockets"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine_db", ENGINES, indirect=True)
def test_reload_lifecycle_on_each_engine(engine_db, stacks, caplog):
    db = engine_db

    def fill(stack):
        p21, p22 = stack.port_map[8021], stack.port_map[8022]
        db.insert(TABLE, [(None, "ClueCon", "127.0.0.1", p22, "CHANNEL_CREATE,CHANNEL_DESTROY"),
                          ("", "ClueCon", "127.0.0.1", p21, "DTMF"),
                          (None, "ClueCon", "127.0.0.1", p21, None)], CUSTOM_COLUMNS)

    # loaded at start, bad row 3 skipped with a warning naming it
    stack = stacks(db_params=db_params(db), before_start=fill,
                   extra='loadmodule "event_datagram.so"')
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(5)
    stack._holders.append(sink)  # closed with the stack
    assert stack.mi("event_subscribe", ["E_FREESWITCH",
                                        f"udp:127.0.0.1:{sink.getsockname()[1]}"])["result"] == "OK"
    start_set = [{"if": "127.0.0.1:8021", "Events": ["DTMF"]},
                 {"if": "127.0.0.1:8022", "Events": ["CHANNEL_CREATE", "CHANNEL_DESTROY"]}]
    assert fs_list(stack) == start_set
    assert any("row id 3 skipped" in r.getMessage() and "fs_events cannot be null" in r.getMessage()
               for r in caplog.records)
    stack.wait_commands(8021, 1, ["auth ClueCon", "event json DTMF"])
    stack.wait_commands(8022, 1, ["auth ClueCon", "event json CHANNEL_CREATE",
                                  "event json CHANNEL_DESTROY"])

    # wrong version row: 500, old set kept, nothing on the wire
    db.set_version(TABLE, 2)
    assert stack.mi("fs_reload") == {"jsonrpc": "2.0", "error": {
        "code": 500, "message": "Internal Error"}, "id": 1}
    assert fs_list(stack) == start_set
    db.set_version(TABLE, 1)

    # a second identical reload changes nothing
    assert stack.mi("fs_reload")["result"] == "OK"
    assert fs_list(stack) == start_set

    # a new row, then the reload is stuck on the DB and its connection dies
    db.insert(TABLE, [(None, "ClueCon", "127.0.0.1", stack.port_map[8021], "TALK")],
              CUSTOM_COLUMNS)
    if db.engine == "sqlite":
        stack.app.scripting.db.timeout = 0.5
        db.execute("BEGIN EXCLUSIVE")
        reload = gevent.spawn(stack.mi, "fs_reload")
    else:
        lock_table(db, TABLE)
        reload = gevent.spawn(stack.mi, "fs_reload")
        waiter = find_waiter(db)
    # meanwhile events are relayed and the MI and the ESL sockets answer
    stack.sims[8021].push_event('{"Event-Name":"DTMF","DTMF-Digit":"7"}')
    assert json.loads(sink.recvfrom(65536)[0])["params"]["body"] == \
        '{"Event-Name":"DTMF","DTMF-Digit":"7"}'
    assert fs_list(stack) == start_set
    assert stack.mi("freeswitch_esl", ["api echo alive", stack.rewrite(
        "127.0.0.1:8021")])["result"] == "alive"
    if db.engine == "sqlite":
        reply = reload.get(timeout=10)
        db.execute("COMMIT")
    else:
        kill_connection(db, waiter)
        reply = reload.get(timeout=10)
        unlock_table(db)
    assert reply == {"jsonrpc": "2.0", "error": {"code": 500, "message": "Internal Error"},
                     "id": 1}
    assert fs_list(stack) == start_set

    # the server is fine again: the new set is loaded
    assert stack.mi("fs_reload")["result"] == "OK"
    assert fs_list(stack) == [{"if": "127.0.0.1:8021", "Events": ["TALK"]}] + start_set
    stack.wait_commands(8021, 1, ["auth ClueCon", "event json DTMF", "api echo alive",
                                  "event json TALK"])

    # emptied table: every socket released, connections closed without nixevent
    db.execute(f"DELETE FROM {TABLE}")
    assert stack.mi("fs_reload")["result"] == "OK"
    assert fs_list(stack) == []
    stack.wait_closed(8022, 1)
    assert stack.commands(8022, 1) == ["auth ClueCon", "event json CHANNEL_CREATE",
                                       "event json CHANNEL_DESTROY"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("engine_db", ["postgres", "mysql"], indirect=True)
def test_unreachable_server_at_start_and_reload(engine_db, stacks, caplog):
    """A DB that is down at start: start-up continues with the modparams; a
    reload answers 500 and keeps them."""
    with socket.socket() as s:  # bound, never listening: refused, and nobody else gets the port
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
        url = f"{engine_db.engine}://u:secretpw@127.0.0.1:{dead}/x"
        stack = stacks(db_params=f'modparam("freeswitch_scripting", "db_url", "{url}")',
                       modparams='modparam("freeswitch_scripting", "fs_subscribe", '
                                 '":ClueCon@127.0.0.1:8021?DTMF")')
        assert fs_list(stack) == [{"if": "127.0.0.1:8021", "Events": ["DTMF"]}]
        assert stack.mi("fs_reload")["error"] == {"code": 500, "message": "Internal Error"}
        assert fs_list(stack) == [{"if": "127.0.0.1:8021", "Events": ["DTMF"]}]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "secretpw" not in logged and f"127.0.0.1:{dead}" in logged

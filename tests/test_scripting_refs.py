"""Reference accounting between the fs_list set and the real ESL manager,
under random sequences of subscribe / unsubscribe / reload (hypothesis).

After every step: each socket's reference count is the number of entries
naming it, each event's reference sum is the number of those entries
listing it, no socket without a reference is left open, and a rejected call
changed nothing. The sockets point at a port where nothing listens (the
connection attempts fail quietly): only the bookkeeping is under test here;
the wire effects are covered by the golden replays.
"""

from __future__ import annotations

import socket
import sqlite3
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from opensips_fs.config import FreeswitchSettings, ScriptingSettings
from opensips_fs.esl.manager import EslManager
from opensips_fs.mi.commands import MiError
from opensips_fs.scripting import Scripting
from opensips_fs.stats import Stats

NAMES = ["DTMF", "TALK", "NOTALK", "CHANNEL_STATE", "", "dtmf"]
HOSTS = ["127.0.0.1", "localhost"]

events = st.lists(st.sampled_from(NAMES), min_size=0, max_size=4)
op = st.one_of(
    st.tuples(st.just("sub"), st.integers(0, 3), events, st.booleans()),
    st.tuples(st.just("unsub"), st.integers(0, 3), events, st.booleans()),
    st.tuples(st.just("reload"), st.lists(st.tuples(st.integers(0, 3), events), max_size=4),
              st.booleans(), st.booleans()),
)


@pytest.fixture(scope="module")
def dead_ports():
    holders = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        holders.append(s)
    yield [h.getsockname()[1] for h in holders]
    for h in holders:
        h.close()


def check(scripting: Scripting, manager: EslManager):
    refs: Counter[int] = Counter()
    sums: Counter[tuple[int, str]] = Counter()
    for entry in scripting.set.entries:
        assert len(entry.events) == len(set(entry.events))
        refs[id(entry.socket)] += 1
        for name in entry.events:
            sums[(id(entry.socket), name)] += 1
        assert manager.find(entry.socket.host, entry.socket.port) is entry.socket
    for sock in manager.sockets():
        assert sock.refs == refs[id(sock)], sock
        assert sock.refs > 0 or sock.esl_used
        for name in NAMES:
            if name:
                assert sock.event_refs(name) == sums[(id(sock), name)], (sock, name)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, max_size=12))
def test_references_follow_the_entries(ops, tmp_path_factory, dead_ports):
    tmp = tmp_path_factory.mktemp("refs")
    db = tmp / "fs.sqlite"
    stats = Stats()
    manager = EslManager(FreeswitchSettings(esl_connect_timeout=200, esl_cmd_timeout=200), stats)
    manager.start()
    settings_ = ScriptingSettings(db_url=f"sqlite://{db}")
    scripting = Scripting(settings_, manager, None, stats, str(tmp))
    scripting.start()
    sockets = [(host, port) for host in HOSTS for port in dead_ports]
    try:
        for step in ops:
            before = scripting.list()
            if step[0] in ("sub", "unsub"):
                _, n, names, with_password = step
                host, port = sockets[n]
                url = f"{':ClueCon@' if with_password else ''}{host}:{port}"
                call = scripting.subscribe if step[0] == "sub" else scripting.unsubscribe

                def read_events(names=names):
                    if not names:
                        raise MiError(-32602, "Invalid params", "Empty array in parameter 'events'")
                    return names
                try:
                    call(url, read_events)
                except MiError:
                    assert scripting.list() == before  # rejected: nothing changed
            else:
                _, rows, good_version, present = step
                conn = sqlite3.connect(db)
                with conn:
                    conn.execute("DELETE FROM freeswitch")
                    conn.execute("UPDATE version SET table_version = ?", (1 if good_version else 2,))
                    for n, names in rows:
                        host, port = sockets[n]
                        conn.execute("INSERT INTO freeswitch (password, ip, port, events_csv) "
                                     "VALUES ('ClueCon', ?, ?, ?)", (host, port, ",".join(names)))
                conn.close()
                try:
                    scripting.reload()
                    assert good_version
                    loaded = [(sockets[n], [x for x in dict.fromkeys(names) if x])
                              for n, names in rows if any(names)]
                    assert [(e.socket.host, e.socket.port) for e in scripting.set.entries] == \
                        [s for s, _ in reversed(loaded)]
                except MiError as exc:
                    assert not good_version and exc.code == 500
                    assert scripting.list() == before
            check(scripting, manager)
        scripting.stop()
        assert all(sock.refs == 0 for sock in manager.sockets())
        assert manager.sockets() == []
    finally:
        manager.stop()

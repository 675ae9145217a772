"""The ESL connection manager against the in-process FreeSWITCH simulator
(ephemeral ports on 127.0.0.1): login, subscriptions on the wire, commands,
faults, reconnects, lifetime, delivery."""

from __future__ import annotations

import gc
import json
import sys
import time

import gevent
import pytest

from opensips_fs.config import FreeswitchSettings
from opensips_fs.esl.connection import EslNotConnected, EslReply, EslTimeout
from opensips_fs.esl.manager import TICK, TRIM_AFTER, EslManager, EslNoPassword, backoff_gap, rejected_retry_gap
from opensips_fs.sim import FsSimulator, SimSettings, SimUser
from opensips_fs.stats import Stats
from support.esl_managers import manager_factory, stat
from support.waits import assert_never, wait_until

pytestmark = pytest.mark.timeout(30)

PASSWORD = "ClueCon"


class Collector:
    """A trivial event sink: remembers (socket name, event name, body)."""

    def __init__(self):
        self.events = []

    def __call__(self, sock, name, body):
        self.events.append((sock.name, name, body))

    def names(self):
        return [n for _, n, _ in self.events]

    def seqs(self, name=None):
        return [int(json.loads(b)["Event-Sequence"]) for _, n, b in self.events if name in (None, n)]


@pytest.fixture
def stats():
    return Stats()


@pytest.fixture
def make_manager(stats):
    yield from manager_factory(stats, Collector)


@pytest.fixture
def box():
    with FsSimulator(SimSettings(password=PASSWORD, heartbeat=0)) as sim:
        yield sim


def settled(sock):
    """Connected, and FreeSWITCH answered every subscription at least once."""
    return sock.settled()


def connected_socket(mgr, box, *events, username=None, password=PASSWORD):
    sock = mgr.get("127.0.0.1", box.port, username, password)
    sock.ref()
    for name in events:
        sock.subscribe(name)
    wait_until(lambda: settled(sock))
    return sock


def client_of(box, n=1):
    return wait_until(lambda: len(box.clients) >= n and box.clients[n - 1])


# ---------------------------------------------------------------------------
# Login

def test_auth_login_and_greeting(make_manager, box, stats):
    mgr = make_manager()
    sock = connected_socket(mgr, box)
    assert client_of(box).commands == ["auth ClueCon"]
    status = sock.status()
    assert list(status)[:9] == ["if", "state", "refs", "events", "pending", "attempts", "last_error",
                                "connected_since", "heartbeat"]
    assert status["if"] == f"127.0.0.1:{box.port}" and status["state"] == "connected"
    assert status["refs"] == 1 and status["attempts"] == 0 and status["connected_since"].endswith("Z")
    assert stat(stats, "connected_sockets") == 1 and stat(stats, "sockets") == 1


def test_userauth_login(make_manager):
    with FsSimulator(SimSettings(password="other", heartbeat=0,
                                 users=[SimUser("esluser@127.0.0.1", "eslpass")])) as sim:
        mgr = make_manager()
        sock = mgr.get("127.0.0.1", sim.port, "esluser@127.0.0.1", "eslpass")
        sock.ref()
        wait_until(lambda: sock.connected)
        assert sim.clients[0].commands == ["userauth esluser@127.0.0.1:eslpass"]
        assert sock.command("api status").content_type == "api/response"


def test_wrong_password_backs_off_then_new_credentials_work(make_manager, box, stats):
    mgr = make_manager()
    sock = mgr.get("127.0.0.1", box.port, None, "WrongSecret")
    sock.ref()
    wait_until(lambda: sock.state == "backoff")
    status = sock.status()
    assert status["attempts"] == 1 and "refused the login" in status["last_error"]
    assert "WrongSecret" not in json.dumps(status) and PASSWORD not in json.dumps(status)
    assert box.clients[0].commands == ["auth WrongSecret"]
    assert stat(stats, "connect_failures") == 1
    sock.update_credentials(None, PASSWORD)  # used from the next attempt (1 s later)
    wait_until(lambda: sock.connected, timeout=3)
    assert box.clients[-1].commands == ["auth ClueCon"]
    assert sock.status()["attempts"] == 0 and sock.status()["last_error"] == ""


def test_credentials_rules():
    mgr = EslManager(FreeswitchSettings(), Stats())
    with pytest.raises(EslNoPassword):
        mgr.get("127.0.0.1", 1)
    sock = mgr.get("fs1", None, "u", "p1")
    assert sock.port == 8021 and sock.name == "fs1:8021" and mgr.find("fs1") is sock
    assert mgr.get("fs1", 8021) is sock  # no password needed once it exists
    assert mgr.get("fs1", 8021, "x", "p9") is sock and sock.username == "u"  # get() never updates
    # update_credentials() says whether anything changed
    assert sock.update_credentials(None, None) is True and sock.username is None  # user cleared
    assert sock.update_credentials(None, "p1") is False  # the password was kept
    assert sock.update_credentials("v", "p2") is True and sock.username == "v"
    assert sock.update_credentials("v", "p2") is False
    assert sock.update_credentials("db", "p3", from_db=True) is True and sock.db_provisioned
    assert sock.update_credentials("url", "p4") is False  # URLs no longer change a DB-provisioned socket
    assert sock.username == "db" and sock.update_credentials("db", "p3", from_db=True) is False
    sock.release_db_provisioning()  # its row is gone: URLs count again
    assert sock.update_credentials("url", "p4") is True and sock.username == "url"
    assert mgr.get("localhost", 8021, None, "p") is not sock
    assert [s.name for s in mgr.sockets()] == ["fs1:8021", "localhost:8021"]
    assert "p3" not in json.dumps(sock.status()) and "p3" not in repr(sock)


# ---------------------------------------------------------------------------
# Subscriptions on the wire

def test_subscribe_reference_counting_exact_wire(make_manager, box):
    mgr = make_manager()
    sock = connected_socket(mgr, box, "CHANNEL_ANSWER")
    client = box.clients[0]
    sock.subscribe("CHANNEL_ANSWER")  # second user of the same event: nothing on the wire
    sock.subscribe("DTMF")
    wait_until(lambda: "DTMF" in sock.status()["events"])
    sock.unsubscribe("CHANNEL_ANSWER")  # one reference left
    # the wire is synced at once and again on every TICK: nothing within one
    assert_never(lambda: len(client.commands) > 3, during=TICK, what="a command for a referenced event")
    assert client.commands == ["auth ClueCon", "event json CHANNEL_ANSWER", "event json DTMF"]
    sock.unsubscribe("CHANNEL_ANSWER")  # last one: nixevent, socket stays
    wait_until(lambda: "nixevent CHANNEL_ANSWER" in client.commands)
    assert sock.unsubscribe("CHANNEL_ANSWER") is False  # no reference left: ignored
    assert_never(lambda: len(client.commands) > 4, during=TICK, what="a command for an unreferenced event")
    assert client.commands == ["auth ClueCon", "event json CHANNEL_ANSWER", "event json DTMF",
                               "nixevent CHANNEL_ANSWER"]
    assert sock.status()["events"] == ["DTMF"]
    # the last reference of the socket: closed at once, without nixevent
    sock.unsubscribe("DTMF")
    sock.unref()
    wait_until(lambda: not client.alive)
    assert client.commands[-1] == "nixevent CHANNEL_ANSWER"
    assert mgr.sockets() == [] and mgr.find("127.0.0.1", box.port) is None
    assert sock.status()["state"] == "closed"


def test_resubscribe_order_is_first_subscribed(make_manager, box):
    mgr = make_manager()
    sock = connected_socket(mgr, box, "B_EVENT_X", "HEARTBEAT", "CHANNEL_CREATE")
    assert box.clients[0].commands[1:] == ["event json B_EVENT_X", "event json HEARTBEAT",
                                           "event json CHANNEL_CREATE"]
    assert sock.status()["events"] == ["HEARTBEAT", "CHANNEL_CREATE"]
    assert sock.status()["pending"] == ["B_EVENT_X"]
    box.drop()
    wait_until(lambda: len(box.clients) == 2 and len(box.clients[1].commands) >= 4)
    assert box.clients[1].commands[:4] == ["auth ClueCon", "event json B_EVENT_X", "event json HEARTBEAT",
                                           "event json CHANNEL_CREATE"]


def test_refused_event_retried_every_second_and_cancelled_without_nixevent(make_manager, box, stats):
    mgr = make_manager()
    sock = connected_socket(mgr, box, "NOT_A_REAL_EVENT")
    client = box.clients[0]
    wait_until(lambda: stat(stats, "subscribe_rejected") >= 3, timeout=5)
    status = sock.status()
    assert status["pending"] == ["NOT_A_REAL_EVENT"] and status["events"] == []
    assert "NOT_A_REAL_EVENT" in status["last_error"] and "-ERR no keywords supplied" in status["last_error"]
    sock.subscribe("HEARTBEAT")  # other events are unaffected
    wait_until(lambda: sock.status()["events"] == ["HEARTBEAT"])
    count = client.commands.count("event json NOT_A_REAL_EVENT")
    sock.unsubscribe("NOT_A_REAL_EVENT")
    # a retry still due would go out within its gap, on the next TICK after it
    assert_never(lambda: "nixevent NOT_A_REAL_EVENT" in client.commands
                 or client.commands.count("event json NOT_A_REAL_EVENT") > count,
                 during=rejected_retry_gap(1) + TICK, what="a nixevent or retry after the unsubscribe")


def test_retry_schedules():
    assert [backoff_gap(k) for k in (0, 1, 2, 3, 4, 5, 6, 7, 8, 500)] == \
        [0, 1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff_gap(3, max_gap=3) == 3
    assert [rejected_retry_gap(k) for k in (1, 10, 11, 12, 13, 14, 15, 16, 100)] == \
        [1, 1, 2, 4, 8, 16, 30, 30, 30]


def test_events_relayed_case_insensitively_in_order_and_at_once(make_manager, box, stats):
    mgr = make_manager()
    sink = mgr.event_sink
    sock = connected_socket(mgr, box, "custom", "HEARTBEAT")
    for i in range(50):
        box.raise_event("CUSTOM", {"N": str(i)})  # CUSTOM alone: no subclass (docs/protocols/esl.md §6.1)
    wait_until(lambda: len(sink.events) == 50)
    assert sink.names() == ["CUSTOM"] * 50  # name as FreeSWITCH sent it
    assert [json.loads(b)["N"] for _, _, b in sink.events] == [str(i) for i in range(50)]
    # a single event is handed on without waiting for more input
    box.fire_heartbeat()
    wait_until(lambda: len(sink.events) == 51, timeout=1)
    assert sink.events[-1][1] == "HEARTBEAT"
    assert sock.idle_cpu is not None and sock.max_sessions == 1000 and sock.session_count == 0
    hb = sock.status()["heartbeat"]
    assert list(hb) == ["Idle-CPU", "Session-Count", "Max-Sessions", "age_s"]
    assert hb["Max-Sessions"] == "1000" and hb["age_s"] == 0
    assert stat(stats, "events_relayed") == 51


def test_bad_and_unsubscribed_frames_are_dropped_and_counted(make_manager, box, stats):
    mgr = make_manager()
    sink = mgr.event_sink
    sock = connected_socket(mgr, box, "CUSTOM")
    box.push_event(b'{"Event-Name":"CUSTOM","ok":"1"}')
    box.push_event(b"this is not json", force=True)
    box.push_event(b'{"No-Name":"x"}', force=True)
    box.push_event(b'{"Event-Name":123}', force=True)
    box.push_event(b'{"Event-Name":"CHANNEL_HANGUP"}', force=True)  # nobody subscribed
    box.push_event(b"Event-Name: CUSTOM\n\n", content_type="text/event-plain", force=True)
    box.push_raw(b"Content-Type: api/response\nContent-Length: 3\n\nxyz")  # stray reply
    box.push_raw(b"Content-Type: log/data\nContent-Length: 2\n\nhi")
    box.push_event(b'{"Event-Name":"CUSTOM","ok":"2"}')
    wait_until(lambda: len(sink.events) == 2)  # frames are handled in order: the others are done
    assert [json.loads(b)["ok"] for _, _, b in sink.events] == ["1", "2"]
    status = sock.status()
    assert status["events_received"] == 9 and status["events_dropped"] == 7 and status["events_relayed"] == 2
    assert stat(stats, "events_dropped") == 7 and stat(stats, "reconnects") == 0
    assert sock.connected and len(box.clients) == 1
    assert sock.command("api echo still here").body == b"still here"


@pytest.mark.parametrize("raw", [
    b"Content-Length: -1\nContent-Type: text/event-json\n\n",
    b"Content-Length: 9999999999999999\nContent-Type: text/event-json\n\n",
    b"Content-Length: abc\nContent-Type: text/event-json\n\n",
])
def test_protocol_error_drops_and_reconnects(make_manager, box, stats, raw):
    mgr = make_manager()
    sock = connected_socket(mgr, box, "CUSTOM")
    box.push_raw(raw)
    wait_until(lambda: len(box.clients) == 2 and sock.connected)
    assert stat(stats, "reconnects") == 1
    wait_until(lambda: sock.status()["events"] == ["CUSTOM"])


# ---------------------------------------------------------------------------
# Commands

def test_api_and_bgapi_replies(make_manager, box):
    mgr = make_manager()
    sock = connected_socket(mgr, box)
    reply = sock.command("api version")
    assert isinstance(reply, EslReply)
    assert reply.content_type == "api/response" and reply.reply_text is None
    assert reply.body == b"FreeSWITCH Version 1.11.3-dev~64bit ( 64bit)\n"
    assert sock.command("api bogus_command").body == b"-ERR bogus_command Command not found!\n"
    reply = sock.command("bgapi status\nJob-UUID: foobar")
    assert reply.content_type == "command/reply" and reply.body is None
    assert reply.reply_text == "+OK Job-UUID: foobar"
    assert ("Job-UUID", "foobar") in reply.headers
    assert sock.command("nosuchcommand").reply_text == "-ERR command not found"
    assert box.clients[0].commands[1:] == ["api version", "api bogus_command", "bgapi status\nJob-UUID: foobar",
                                           "nosuchcommand"]
    assert sock.status()["commands"] == 4 and sock.esl_used


def test_command_timeout_late_reply_is_discarded(make_manager, box, stats):
    mgr = make_manager()
    sock = connected_socket(mgr, box)
    box.delay(400)
    with pytest.raises(EslTimeout):
        sock.command("api echo first", timeout=0.1)
    box.delay(0)
    # the late reply of "first" arrives first and must not be taken for this one
    assert sock.command("api echo second").body == b"second"
    assert sock.command("api echo third").body == b"third"
    assert stat(stats, "command_timeouts") == 1 and sock.status()["command_timeouts"] == 1
    assert sock.connected and stat(stats, "reconnects") == 0


def test_command_waits_for_a_new_socket_to_connect(make_manager, box):
    mgr = make_manager()
    sock = mgr.get("127.0.0.1", box.port, None, PASSWORD)
    assert sock.command("api echo hi").body == b"hi"  # first call on a brand-new socket works [EMU]


def test_command_on_unreachable_socket_fails_clearly(make_manager, box):
    port = box.port
    box.stop()
    mgr = make_manager(FreeswitchSettings(esl_connect_timeout=500))
    sock = mgr.get("127.0.0.1", port, None, PASSWORD)
    t0 = time.monotonic()
    with pytest.raises(EslNotConnected, match="not connected"):
        sock.command("api status")
    assert time.monotonic() - t0 < 1.0
    assert sock.state == "backoff"


def test_parallel_commands_each_get_their_own_reply(make_manager, box):
    mgr = make_manager()
    sock = connected_socket(mgr, box)
    jobs = [gevent.spawn(sock.command, f"api echo n{i}") for i in range(100)]
    gevent.joinall(jobs, raise_error=True)
    assert [j.get().body for j in jobs] == [f"n{i}".encode() for i in range(100)]


# ---------------------------------------------------------------------------
# Faults

def test_freeswitch_restart_reconnects_resubscribes_fails_pending(make_manager, box, stats):
    mgr = make_manager()
    sink = mgr.event_sink
    sock = connected_socket(mgr, box, "CUSTOM", "HEARTBEAT")
    for _ in range(5):
        box.raise_event("CUSTOM")
    wait_until(lambda: len(sink.events) == 5)
    box.delay(2000)  # a command FreeSWITCH will never answer before it restarts
    pending = gevent.spawn(sock.command, "api status")
    gevent.sleep(0.1)
    box.delay(0)
    t0 = time.monotonic()
    box.restart(down=0.2)
    with pytest.raises(EslNotConnected, match="lost"):
        pending.get(timeout=5)
    assert time.monotonic() - t0 < 1.0  # failed at once, not after the command timeout
    wait_until(lambda: len(box.live_clients()) == 1 and box.live_clients()[0].commands[1:] ==
               ["event json CUSTOM", "event json HEARTBEAT"])
    wait_until(lambda: sock.status()["events"] == ["CUSTOM", "HEARTBEAT"])
    for _ in range(5):
        box.raise_event("CUSTOM")
    wait_until(lambda: len(sink.events) == 10)
    assert_never(lambda: len(sink.events) > 10, during=TICK, what="an event delivered twice")
    seqs = sink.seqs()
    assert len(seqs) == len(set(seqs)) == 10  # nothing delivered twice
    assert stat(stats, "reconnects") == 1 and sock.status()["reconnects"] == 1
    assert "disconnect notice" in sock.last_error or sock.last_error == ""


def test_events_held_until_every_subscription_is_back(make_manager, box):
    """After a reconnect nothing is delivered before FreeSWITCH has answered
    every resubscription; then the held events come out in order."""
    mgr = make_manager()
    sink = mgr.event_sink
    sock = connected_socket(mgr, box, "CUSTOM", "HEARTBEAT")
    reply_delay = 0.4
    box.delay(int(reply_delay * 1000))  # every reply of the new connection comes late
    box.drop()
    client = wait_until(lambda: len(box.clients) == 2 and "CUSTOM" in box.clients[1].events and box.clients[1])
    assert "HEARTBEAT" not in client.events  # its reply is still on its way
    for i in range(3):
        box.raise_event("CUSTOM", {"N": str(i)})
    assert_never(lambda: sink.events, during=reply_delay / 3, what="delivery before every resubscription")
    status = sock.status()
    assert sink.events == [] and status["events"] == ["CUSTOM"] and status["pending"] == ["HEARTBEAT"]
    wait_until(lambda: len(sink.events) == 3, timeout=3)
    assert sock.status()["events"] == ["CUSTOM", "HEARTBEAT"]
    assert [json.loads(b)["N"] for _, _, b in sink.events] == ["0", "1", "2"]
    box.delay(0)


def test_disconnect_notice_triggers_immediate_reconnect(make_manager, box):
    mgr = make_manager()
    sock = connected_socket(mgr, box, "HEARTBEAT")
    t0 = time.monotonic()
    box.drop(notice=True)
    wait_until(lambda: len(box.clients) == 2 and sock.connected and sock.status()["events"] == ["HEARTBEAT"])
    assert time.monotonic() - t0 < 0.9  # the first reconnect attempt is immediate
    assert sock.reconnects == 1


def test_abrupt_loss_without_fin_is_detected(make_manager, box, stats):
    """The peer stops answering (no FIN, no RST): the silence bound kills the
    connection and the manager reconnects once the peer is back."""
    liveness_timeout = 0.8
    mgr = make_manager(FreeswitchSettings(esl_connect_timeout=300), liveness_timeout=liveness_timeout,
                       idle_probe=0.2)
    sock = connected_socket(mgr, box, "HEARTBEAT")
    box.stall(1.6)
    wait_until(lambda: "no data from FreeSWITCH" in sock.last_error, timeout=3)
    wait_until(lambda: sock.connected and sock.status()["events"] == ["HEARTBEAT"], timeout=6)
    assert stat(stats, "reconnects") == 1
    # an idle but healthy connection is probed, not dropped
    assert_never(lambda: not sock.connected or stat(stats, "reconnects") != 1,
                 during=2 * liveness_timeout, what="a healthy idle connection dropped")
    assert "opensips-fs-ping" in box.live_clients()[0].commands


def test_busy_connection_not_taken_for_dead(make_manager, box, stats):
    """A slow synchronous api keeps FreeSWITCH silent; that is not a loss."""
    mgr = make_manager(liveness_timeout=0.5, idle_probe=0.2, busy_timeout=5)
    sock = connected_socket(mgr, box)
    box.delay(1200)
    assert sock.command("api echo slow", timeout=3).body == b"slow"
    assert stat(stats, "reconnects") == 0


def test_slow_consumer_drops_counted_reader_unaffected(make_manager, box, stats):
    mgr = make_manager()
    sink = mgr.event_sink
    slow_seen = []

    def slow(sock, name, body):
        slow_seen.append(body)
        gevent.sleep(0.5)

    consumer = mgr.add_consumer("slow", slow, maxsize=10)
    fast = mgr.add_consumer("fast", lambda s, n, b: None, maxsize=100_000)
    sock = connected_socket(mgr, box, "CHANNEL_CREATE")
    box.burst(2000, "CHANNEL_CREATE")
    wait_until(lambda: len(sink.events) == 2000)
    seqs = sink.seqs()
    assert seqs == sorted(seqs) and len(set(seqs)) == 2000
    wait_until(lambda: fast.delivered == 2000)
    assert fast.dropped == 0
    assert consumer.dropped >= 1980 and consumer.dropped + len(consumer.queue) + len(slow_seen) == 2000
    assert consumer.dropped_by_socket == {sock.name: consumer.dropped}
    assert sock.status()["events_queue_dropped"] == consumer.dropped
    assert stat(stats, "events_queue_dropped") == consumer.dropped
    assert consumer.status()["dropped"] == consumer.dropped


def test_consumer_forgets_a_socket_once_it_is_gone(make_manager, box, stats):
    mgr = make_manager()
    consumer = mgr.add_consumer("stuck", lambda s, n, b: gevent.sleep(60), maxsize=1)
    sock = connected_socket(mgr, box, "CHANNEL_CREATE")
    box.burst(50, "CHANNEL_CREATE")
    wait_until(lambda: consumer.dropped >= 48)
    assert consumer.status()["dropped_by_socket"] == {sock.name: consumer.dropped}
    sock.unsubscribe("CHANNEL_CREATE")
    sock.unref()
    assert mgr.sockets() == []
    status = consumer.status()
    assert status["dropped_by_socket"] == {} and status["dropped"] == consumer.dropped


# ---------------------------------------------------------------------------
# Lifetime

def test_socket_only_created_is_reaped_and_never_connects(make_manager, box):
    mgr = make_manager()
    sock = mgr.get("127.0.0.1", box.port, None, PASSWORD)
    assert sock.state == "closed" and mgr.sockets() == [sock]
    wait_until(lambda: mgr.sockets() == [], timeout=4)
    assert box.clients == []


class _Watcher:
    def stop(self):
        pass


def test_many_sockets_gone_their_heap_is_handed_back(make_manager):
    """Once TRIM_AFTER sockets went, the manager runs a full collection (it
    empties the free lists) and clears the attribute cache (it holds names
    made while the sockets lived) before trimming the C heap."""
    mgr = make_manager()
    name = "".join(["st", "op"])  # made at run time, as gevent's C code does
    refs = sys.getrefcount(name)
    getattr(_Watcher(), name)
    assert sys.getrefcount(name) == refs + 1  # the attribute cache holds it
    full_collections = []

    def watch(phase, info):
        if phase == "start" and info["generation"] == 2:
            full_collections.append(info)

    gc.disable()  # no automatic collection: only one asked for is seen
    gc.callbacks.append(watch)
    try:
        for port in range(20000, 20000 + TRIM_AFTER):
            mgr.get("127.0.0.1", port, None, PASSWORD)  # created, never used: reaped
        wait_until(lambda: mgr.sockets() == [], timeout=5)
        wait_until(lambda: full_collections and sys.getrefcount(name) == refs, timeout=4 * TICK)
    finally:
        gc.callbacks.remove(watch)
        gc.enable()


def test_esl_used_socket_outlives_refs_then_idles_out(make_manager, box):
    settings = FreeswitchSettings(fs_no_esl_timeout=2)
    mgr = make_manager(settings)
    sock = connected_socket(mgr, box, "HEARTBEAT")
    sock.command("api echo x")
    sock.unsubscribe("HEARTBEAT")
    sock.unref()  # ESL-used: stays
    most_of_idle = 0.6 * settings.fs_no_esl_timeout
    assert_never(lambda: mgr.sockets() != [sock] or not sock.connected, during=most_of_idle,
                 what="an ESL-used socket closed before fs_no_esl_timeout")
    sock.command("api echo y")  # each command restarts the idle clock
    assert_never(lambda: not sock.connected, during=most_of_idle,
                 what="the idle clock not restarted by a command")
    wait_until(lambda: mgr.sockets() == [], timeout=4)
    wait_until(lambda: not box.clients[0].alive)
    with pytest.raises(EslNotConnected):
        sock.command("api echo z")


def test_esl_only_socket_gives_up_after_100_attempts(make_manager, box):
    import opensips_fs.esl.manager as manager_module

    port = box.port
    box.stop()
    mgr = make_manager(FreeswitchSettings(esl_connect_timeout=200))
    sock = mgr.get("127.0.0.1", port, None, PASSWORD)
    with pytest.raises(EslNotConnected):
        sock.command("api status")
    sock.attempts = manager_module.ESL_ONLY_MAX_ATTEMPTS  # fast-forward the counter
    wait_until(lambda: mgr.sockets() == [], timeout=3)


def test_unreferenced_never_connected_socket_stops_trying(make_manager, box):
    port = box.port
    box.stop()
    mgr = make_manager()
    sock = mgr.get("127.0.0.1", port, None, PASSWORD)
    sock.ref()
    wait_until(lambda: sock.state == "backoff")
    sock.unref()
    assert mgr.sockets() == [] and sock.state == "closed"  # [EMU] no leak


def test_manager_stop_closes_everything(make_manager, box, stats):
    mgr = make_manager()
    connected_socket(mgr, box, "HEARTBEAT")
    mgr.stop()
    wait_until(lambda: not box.clients[0].alive)
    assert mgr.sockets() == [] and stat(stats, "connected_sockets") == 0


# ---------------------------------------------------------------------------
# Scale

@pytest.mark.timeout(60)
def test_200_sockets_at_once(make_manager):
    sims = [FsSimulator(SimSettings(password=PASSWORD, heartbeat=0)).start() for _ in range(200)]
    try:
        mgr = make_manager()
        sink = mgr.event_sink
        socks = []
        for sim in sims:
            sock = mgr.get("127.0.0.1", sim.port, None, PASSWORD)
            sock.ref()
            sock.subscribe("CUSTOM")
            socks.append(sock)
        wait_until(lambda: all(s.status()["events"] == ["CUSTOM"] for s in socks), timeout=20)
        for sim in sims:
            for i in range(5):
                sim.raise_event("CUSTOM", {"N": str(i)})
        wait_until(lambda: len(sink.events) == 1000, timeout=20)
        per_socket: dict[str, list[str]] = {}
        for name, _, body in sink.events:
            per_socket.setdefault(name, []).append(json.loads(body)["N"])
        assert len(per_socket) == 200
        assert all(v == ["0", "1", "2", "3", "4"] for v in per_socket.values())
        assert [s.name for s in mgr.sockets()] == [s.name for s in socks]
        replies = [gevent.spawn(s.command, "api echo ok") for s in socks]
        gevent.joinall(replies, raise_error=True)
        assert all(r.get().body == b"ok" for r in replies)
    finally:
        for sim in sims:
            sim.stop()


def test_failing_event_sink_is_counted_and_harmless(make_manager, box, stats):
    mgr = make_manager()
    seen = []

    def sink(sock, name, body):
        seen.append(body)
        if len(seen) % 2:
            raise RuntimeError("consumer bug")

    mgr.event_sink = sink
    sock = connected_socket(mgr, box, "CUSTOM")
    for i in range(4):
        box.raise_event("CUSTOM", {"N": str(i)})
    wait_until(lambda: len(seen) == 4)
    assert stat(stats, "sink_errors") == 2 and sock.connected and stat(stats, "reconnects") == 0


def test_unanswered_subscription_means_a_dead_connection(make_manager, box, stats):
    """OpenSIPS blocks forever on a subscription reply; we bound it by
    esl_cmd_timeout and reconnect [EMU]."""
    mgr = make_manager(FreeswitchSettings(esl_cmd_timeout=300))
    sock = connected_socket(mgr, box)
    box.delay(1000)
    sock.subscribe("HEARTBEAT")
    wait_until(lambda: "no reply to a subscription command" in sock.last_error, timeout=3)
    box.delay(0)
    wait_until(lambda: settled(sock) and sock.status()["events"] == ["HEARTBEAT"], timeout=5)
    assert stat(stats, "reconnects") == 1
    assert box.live_clients()[0].commands == ["auth ClueCon", "event json HEARTBEAT"]

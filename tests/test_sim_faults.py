"""Fault injection and the slow-consumer rule of the simulator, over real sockets."""

import socket
import time

import gevent
import pytest

from opensips_fs.sim import FsSimulator, SimSettings
from support.esl_client import EslTestClient

pytestmark = pytest.mark.timeout(20)

BYE = (b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n"
       b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n")
SHUTDOWN = b"Content-Type: text/disconnect-notice\nContent-Length: 31\n\nThe system is being shut down.\n"


@pytest.fixture
def box():
    with FsSimulator(SimSettings(port=0, heartbeat=0)) as b:
        yield b


def test_drop_without_and_with_notice(box):
    a = EslTestClient(box.port).login()
    assert box.drop() == 1
    assert a.wait_eof() and a.frames == []
    b = EslTestClient(box.port).login()
    assert box.drop(notice=True) == 1
    assert b.wait_eof() and [f.raw for f in b.frames] == [BYE]
    assert [c.alive for c in box.clients] == [False, False]
    assert box.state()["conns"] == [] and len(box.state()["closed"]) == 2


def test_stall_holds_replies(box):
    c = EslTestClient(box.port).login()
    stall = 0.4
    box.stall(stall)
    start = time.monotonic()
    c.send(b"api version\n\n")
    assert c.collect(stall / 2) == []  # well inside the stall
    reply = c.frame(timeout=3)
    assert reply.content_type == "api/response"
    assert time.monotonic() - start >= stall - 0.05


def test_delay_every_reply(box):
    c = EslTestClient(box.port).login()
    box.delay(300)
    start = time.monotonic()
    assert c.cmd("api version").content_type == "api/response"
    assert time.monotonic() - start >= 0.28
    box.delay(0)


def test_refuse_and_accept_again(box):
    port = box.port
    box.refuse(True)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    box.refuse(False)
    EslTestClient(port).login()


def test_restart_sends_shutdown_notice_and_comes_back(box):
    a = EslTestClient(box.port).login()
    old_core = box.identity.core_uuid
    box.restart()
    assert a.wait_eof() and [f.raw for f in a.frames] == [SHUTDOWN]
    assert box.identity.core_uuid != old_core
    EslTestClient(box.port).login()


@pytest.mark.parametrize("notice", [True, False])
def test_restart_without_down_time_rebinds_at_once(box, notice):
    """restart(down=0) with clients connected, from another greenlet (as the
    control op runs it) and several times in a row: the port is bound again
    at once (it used to fail with EADDRINUSE), the clients get the notice or
    are cut, and new clients log in on the same port."""
    port = box.port
    for run in range(3):
        clients = [EslTestClient(port).login() for _ in range(3)]
        eofs = [gevent.spawn(c.wait_eof, 5) for c in clients]  # blocked reading meanwhile
        gevent.sleep(0.02)
        gevent.spawn(box.restart, 0, notice).get(timeout=5)
        assert box.port == port and not box.refusing
        assert [e.get(timeout=5) for e in eofs] == [True] * 3
        assert [[f.raw for f in c.frames] for c in clients] == [[SHUTDOWN] if notice else []] * 3
        assert len(box.live_clients()) == 0
    EslTestClient(port).login()
    assert box.wait_clients(1)[0].commands == ["auth ClueCon"]


def test_set_password(box):
    box.set_password("Other")
    c = EslTestClient(box.port)
    c.frame()
    assert c.cmd("auth ClueCon").header("Reply-Text") == "-ERR invalid"
    EslTestClient(box.port).login("Other")


def test_shutdown_notice_to_everyone(box):
    a = EslTestClient(box.port).login()
    b = EslTestClient(box.port).login()
    box.shutdown()
    for c in (a, b):
        assert c.wait_eof() and [f.raw for f in c.frames] == [SHUTDOWN]


def test_fsctl_shutdown():
    with FsSimulator(SimSettings(port=0, heartbeat=0, shutdown_delay=0.1)) as b:
        a = EslTestClient(b.port).login()
        assert a.cmd("api fsctl shutdown").body == b"+OK\n"
        assert a.wait_eof() and [f.raw for f in a.frames] == [SHUTDOWN]
        assert b.stopped.wait(3)


def test_auth_timeout():
    with FsSimulator(SimSettings(port=0, heartbeat=0, auth_timeout=0.3)) as b:
        c = EslTestClient(b.port)
        assert c.frame().content_type == "auth/request"
        assert c.wait_eof(3) and [f.raw for f in c.frames] == [BYE]


def test_slow_consumer_is_killed_at_a_frame_boundary():
    with FsSimulator(SimSettings(port=0, heartbeat=0, queue_size=200, max_lost=50)) as b:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", b.port))
        slow = EslTestClient.__new__(EslTestClient)
        slow.sock, slow.buf, slow.frames, slow.skipped, slow.eof = sock, b"", [], [], False
        slow.login()
        slow.cmd("event plain CUSTOM esl::flood")
        b.wait_clients(1)
        client = b.clients[0]
        for i in range(20000):
            b.raise_event("CUSTOM", {"Event-Subclass": "esl::flood", "X-Pad": "p" * 500, "N": str(i)})
            if i % 200 == 0:
                gevent.sleep(0)
            if not client.alive or client.closed_reason == "lost events":
                break
        assert client.closed_reason == "lost events"
        assert client.lost_total > 50
        assert b.state()["lost_events"] == client.lost_total
        # now read everything: whole frames, then the notice, then EOF
        assert slow.wait_eof(10)
        frames = slow.frames
        assert frames[-1].raw == (b"Content-Type: text/disconnect-notice\nContent-Length: 39\n\n"
                                  b"killed listener because of lost events\n")
        assert {f.content_type for f in frames[:-1]} == {"text/event-plain"}, \
            [f for f in frames if f.content_type != "text/event-plain"][:3]
        assert slow.buf == b""


def test_lost_counter_resets_on_success():
    with FsSimulator(SimSettings(port=0, heartbeat=0, queue_size=10, max_lost=5)) as b:
        c = EslTestClient(b.port).login()
        c.cmd("event json CUSTOM x::y")
        client = b.wait_clients(1)[0]
        client.hold_events()  # nothing leaves the queue while held
        for _ in range(10 + 5):
            b.raise_event("CUSTOM", {"Event-Subclass": "x::y"})
        assert client.lost == 5 and client.alive
        client.release_events()
        c.collect(0.2)
        b.raise_event("CUSTOM", {"Event-Subclass": "x::y"})
        assert client.lost == 0


def test_acl_rude_rejection():
    with FsSimulator(SimSettings(port=0, heartbeat=0, acl=["10.0.0.0/8"])) as b:
        c = EslTestClient(b.port)
        assert c.wait_eof() and [f.raw for f in c.frames] == [
            b"Content-Type: text/rude-rejection\nContent-Length: 24\n\nAccess Denied, go away.\n"]
    with FsSimulator(SimSettings(port=0, heartbeat=0, acl=["127.0.0.0/8"])) as b:
        EslTestClient(b.port).login()


def test_keep_closed_bounds_the_history():
    with FsSimulator(SimSettings(port=0, heartbeat=0, keep_closed=2)) as b:
        for _ in range(5):
            c = EslTestClient(b.port).login()
            c.send(b"exit\n\n")
            assert c.wait_eof()
        b.wait_for(lambda: not any(x.alive for x in b.clients))
        assert [x.number for x in b.clients][-2:] == [4, 5] and len(b.clients) <= 3
        live = EslTestClient(b.port).login()
        assert b.wait_clients(1)[0].number == 6
        live.close()


def test_slow_log_consumer_is_killed():
    with FsSimulator(SimSettings(port=0, heartbeat=0, queue_size=50, max_lost=10)) as b:
        c = EslTestClient(b.port).login()
        c.cmd("log 7")
        client = b.wait_clients(1)[0]
        b.stall(5, conn=1)  # the connection neither reads nor writes
        for i in range(50 + 11):
            b.log_line("NOTICE", "line %d " % i + "x" * 100)
        assert client.closed_reason == "lost log lines" and client.log_lost_total == 11
        b.stall(0, conn=1)
        assert c.wait_eof(5)
        assert c.frames[-1].raw == (b"Content-Type: text/disconnect-notice\nContent-Length: 42\n\n"
                                    b"killed listener because of lost log lines\n")

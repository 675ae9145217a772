"""The ESL side against hostile or broken peers (the simulator made to
misbehave, or raw TCP servers on 127.0.0.1 written for these tests): what a
peer sends never grows our memory past our limits, never floods the log,
never makes us reconnect in a tight loop, and never writes into the log
unescaped. The intervals below are the manager's named settings."""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass

import gevent
import gevent.server
import pytest

from opensips_fs.config import FreeswitchSettings
from opensips_fs.esl.connection import EslReplyTooLarge
from opensips_fs.esl.socket import ROUTE_CACHE_SIZE, backoff_gap
from opensips_fs.sim import FsSimulator, SimSettings
from opensips_fs.stats import Stats
from support.esl_managers import manager_factory, stat
from support.waits import wait_until

pytestmark = pytest.mark.timeout(40)

PASSWORD = "ClueCon"
# the backoff's first gaps (1 + 2 s): windows that bound how many attempts fit
FIRST_TWO_GAPS = backoff_gap(1) + backoff_gap(2)


class Counting:
    """An event sink that counts what it gets."""

    def __init__(self):
        self.names = []

    def __call__(self, sock, name, body):
        self.names.append(name)


@pytest.fixture
def stats():
    return Stats()


@pytest.fixture
def make_manager(stats):
    yield from manager_factory(stats, Counting)


@pytest.fixture
def box():
    with FsSimulator(SimSettings(password=PASSWORD, heartbeat=0)) as sim:
        yield sim


def connected(mgr, port, *events, password=PASSWORD):
    sock = mgr.get("127.0.0.1", port, None, password)
    sock.ref()
    for name in events:
        sock.subscribe(name)
    wait_until(sock.settled)
    return sock


def event_frame(body: bytes) -> bytes:
    return b"Content-Length: %d\nContent-Type: text/event-json\n\n%s" % (len(body), body)


@dataclass
class Peer:
    """A raw ESL server: `behave(sock, n)` runs for the n-th connection."""

    server: gevent.server.StreamServer
    connections: list

    @property
    def port(self) -> int:
        port = self.server.server_port
        assert port is not None  # listening
        return port


@pytest.fixture
def peer():
    servers = []

    def make(behave):
        connections = []

        def handle(sock, addr):
            connections.append(time.monotonic())
            try:
                behave(sock, len(connections))
            except OSError:
                pass

        server = gevent.server.StreamServer(("127.0.0.1", 0), handle)
        server.start()
        servers.append(server)
        return Peer(server, connections)

    yield make
    for server in servers:
        server.stop(timeout=0)


def login(sock) -> None:
    """Greet, read the auth command, accept it."""
    sock.sendall(b"Content-Type: auth/request\n\n")
    data = b""
    while b"\n\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("client left")
        data += chunk
    sock.sendall(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")


# ---------------------------------------------------------------------------
# Memory: our limits, not the peer's sizes

def test_oversized_event_is_dropped_and_the_connection_stays(make_manager, box, stats, caplog):
    mgr = make_manager(FreeswitchSettings(esl_max_frame_size=64 * 1024))
    sock = connected(mgr, box.port, "CUSTOM")
    big = b'{"Event-Name":"CUSTOM","Pad":"' + b"x" * 200_000 + b'"}'
    box.push_raw(event_frame(big))
    box.raise_event("CUSTOM")
    wait_until(lambda: mgr.event_sink.names == ["CUSTOM"])
    assert sock.connected and stat(stats, "reconnects") == 0 and len(box.clients) == 1
    assert stat(stats, "oversized_frames") == 1 and sock.status()["events_dropped"] == 1
    assert any("200032 bytes, over the 65536-byte esl_max_frame_size" in r.getMessage()
               for r in caplog.records)


def test_oversized_reply_fails_its_command_only(make_manager, box):
    mgr = make_manager(FreeswitchSettings(esl_max_frame_size=1024))
    sock = connected(mgr, box.port)
    with pytest.raises(EslReplyTooLarge, match="over the 1024-byte limit"):
        sock.command("api echo " + "y" * 5000)
    assert sock.command("api echo fine").body == b"fine"  # the FIFO is still in step
    assert sock.connected and sock.reconnects == 0


def test_a_peer_inventing_event_names_cannot_grow_the_route_cache(make_manager, box):
    mgr = make_manager()
    sock = connected(mgr, box.port, "CUSTOM")
    names = 3 * ROUTE_CACHE_SIZE
    box.push_raw(b"".join(event_frame(b'{"Event-Name":"NAME_%d"}' % i) for i in range(names)))
    box.raise_event("CUSTOM")
    wait_until(lambda: mgr.event_sink.names == ["CUSTOM"])
    assert sock.status()["events_dropped"] == names
    assert sock.route_cache_size() <= ROUTE_CACHE_SIZE


# ---------------------------------------------------------------------------
# Reconnects stay calm

def test_a_peer_that_drops_us_right_after_the_login_is_backed_off(make_manager, peer, caplog):
    """It used to cause ~500 reconnects a second: the attempt counter was
    reset by every successful login."""
    def accept_then_leave(sock, n):
        login(sock)

    rogue = peer(accept_then_leave)
    mgr = make_manager()
    sock = mgr.get("127.0.0.1", rogue.port, None, PASSWORD)
    sock.ref()
    gevent.sleep(FIRST_TWO_GAPS * 1.15)
    # at once after the first loss, then 1 s, 2 s: about 4 logins in 3.5 s
    assert 2 <= len(rogue.connections) <= 5, len(rogue.connections)
    gaps = [b - a for a, b in zip(rogue.connections[1:], rogue.connections[2:])]
    assert all(later >= earlier * 1.5 for earlier, later in zip(gaps, gaps[1:]))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "ESL" in r.getMessage()]
    assert len(warnings) == 1 and "of the login" in warnings[0].getMessage()


def test_a_protocol_breaking_peer_is_backed_off(make_manager, peer):
    def accept_then_garbage(sock, n):
        login(sock)
        sock.sendall(b"Content-Length: nope\n\n")
        gevent.sleep(1)

    rogue = peer(accept_then_garbage)
    mgr = make_manager()
    sock = mgr.get("127.0.0.1", rogue.port, None, PASSWORD)
    sock.ref()
    gevent.sleep(FIRST_TWO_GAPS * 1.15)
    assert 2 <= len(rogue.connections) <= 5, len(rogue.connections)
    # the newest connection may be between its login (which clears the
    # error) and the garbage that follows it: wait for its verdict
    wait_until(lambda: "protocol error" in sock.status()["last_error"], 2, what="the protocol error")


def test_connect_failures_back_off_exponentially(make_manager, stats):
    holder = socket.socket()  # bound, never listening: every connection is refused
    holder.bind(("127.0.0.1", 0))
    try:
        mgr = make_manager()
        sock = mgr.get("127.0.0.1", holder.getsockname()[1], None, PASSWORD)
        sock.ref()
        gevent.sleep((FIRST_TWO_GAPS + backoff_gap(3)) * 1.07)
        # attempts at about 0, 1, 3 and 7 s (the old fixed 1 s gap made 8)
        assert 3 <= stat(stats, "connect_failures") <= 4
        assert sock.state == "backoff" and sock.counters()["connect_failures"] == stat(stats, "connect_failures")
    finally:
        holder.close()


def test_a_peer_that_never_answers_the_login_is_named_plainly(make_manager, peer):
    def greet_then_nothing(sock, n):
        sock.sendall(b"Content-Type: auth/request\n\n")
        gevent.sleep(2)

    rogue = peer(greet_then_nothing)
    mgr = make_manager(FreeswitchSettings(esl_connect_timeout=300))
    sock = mgr.get("127.0.0.1", rogue.port, None, PASSWORD)
    sock.ref()
    wait_until(lambda: sock.status()["attempts"] >= 1)
    error = sock.status()["last_error"]
    assert "while we waited for the reply to the login" in error and "no the" not in error


# ---------------------------------------------------------------------------
# Logs: bounded and escaped

def test_heartbeats_without_figures_warn_once_per_interval(make_manager, box, caplog):
    mgr = make_manager()
    sock = connected(mgr, box.port, "HEARTBEAT")
    frames = 2000
    box.push_raw(event_frame(b'{"Event-Name":"HEARTBEAT","Idle-CPU":"x"}') * frames)
    wait_until(lambda: len(mgr.event_sink.names) == frames)
    warnings = [r for r in caplog.records if "HEARTBEAT without usable" in r.getMessage()]
    assert len(warnings) == 1  # it used to be one line per frame
    assert sock.connected


def test_peer_text_reaches_the_log_escaped(make_manager, box, caplog):
    mgr = make_manager()
    connected(mgr, box.port, "CUSTOM")
    fake = b"Disconnected.\nDec  3 13:00:00 [1] CRIT:core: forged line\r\n\x1b[31m"
    box.push_raw(b"Content-Type: text/disconnect-notice\nContent-Length: %d\n\n%s" % (len(fake), fake))
    wait_until(lambda: any("disconnect notice" in r.getMessage() for r in caplog.records))
    logged = [r.getMessage() for r in caplog.records if "disconnect notice" in r.getMessage()]
    assert all("\n" not in m and "\r" not in m and "\x1b" not in m for m in logged)
    assert any("Disconnected.\\x0aDec  3" in m and "\\x1b[31m" in m for m in logged)


def test_a_refused_login_reply_is_escaped(make_manager, peer):
    def refuse_noisily(sock, n):
        sock.sendall(b"Content-Type: auth/request\n\n")
        sock.recv(4096)
        sock.sendall(b"Content-Type: command/reply\nReply-Text: -ERR invalid\x1b]0;pwned\x07\n\n")
        gevent.sleep(0.5)

    rogue = peer(refuse_noisily)
    mgr = make_manager()
    sock = mgr.get("127.0.0.1", rogue.port, None, PASSWORD)
    sock.ref()
    wait_until(lambda: sock.status()["attempts"] >= 1)
    error = sock.status()["last_error"]
    assert "\x1b" not in error and "\x07" not in error and "-ERR invalid\\x1b]0;pwned\\x07" in error
    assert json.dumps(sock.status())  # and it stays plain JSON text


def test_a_failing_socket_reminds_then_announces_recovery(make_manager, box, caplog):
    """One WARNING when it starts failing, a reminder every `failure_reminder`
    seconds, one NOTICE once the connection has lasted `stable_after`."""
    caplog.set_level(logging.DEBUG, logger="opensips_fs.esl")
    box.set_password("Other")
    mgr = make_manager(failure_reminder=2.0, stable_after=0.5, max_gap=0.5)
    sock = mgr.get("127.0.0.1", box.port, None, PASSWORD)
    sock.ref()
    gevent.sleep(4.6)  # attempts every 0.5 s: about 9 failures
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings  # the first, then a reminder at about 2 and 4 s
    assert "refused the login" in warnings[0] and all("still failing after" in w for w in warnings[1:])
    assert sum(1 for r in caplog.records if r.levelno == logging.DEBUG and "refused the login" in r.getMessage()) >= 4
    box.set_password(PASSWORD)
    wait_until(lambda: sock.connected, timeout=3)
    wait_until(lambda: any(r.levelname == "NOTICE" for r in caplog.records), timeout=3)
    notices = [r.getMessage() for r in caplog.records if r.levelname == "NOTICE"]
    assert len(notices) == 1 and "connected again after" in notices[0]

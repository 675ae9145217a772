"""One ESL connection (opensips_fs.esl.connection): connect/login failures,
reply FIFO, loss handling. Peers are the simulator, or a raw TCP server on
127.0.0.1 for behaviours no FreeSWITCH has (silence before the greeting,
a peer that is not ESL at all)."""

from __future__ import annotations

import socket
import time

import gevent
import gevent.server
import pytest

from opensips_fs.esl.connection import (
    PROBE_COMMAND,
    EslAuthError,
    EslConnectError,
    EslConnection,
    EslNotConnected,
    EslTimeout,
)
from opensips_fs.sim import FsSimulator, SimSettings

pytestmark = pytest.mark.timeout(20)


class Recorder:
    def __init__(self):
        self.frames = []
        self.lost = []

    def on_frame(self, frame):
        self.frames.append(frame)

    def on_lost(self, conn, reason):
        self.lost.append(reason)


def make_conn(port, rec, **kwargs):
    kwargs.setdefault("connect_timeout", 1.0)
    return EslConnection("127.0.0.1", port, on_frame=rec.on_frame, on_lost=rec.on_lost, **kwargs)


@pytest.fixture
def box():
    with FsSimulator(SimSettings(password="ClueCon", heartbeat=0)) as sim:
        yield sim


def raw_server(handler):
    server = gevent.server.StreamServer(("127.0.0.1", 0), handler)
    server.start()
    return server


def test_open_and_commands(box):
    rec = Recorder()
    conn = make_conn(box.port, rec)
    conn.open(None, "ClueCon")
    assert conn.connected and conn.command("api echo a", 2).body == b"a"
    conn.close()
    assert not conn.connected and rec.lost == ["closed"]
    with pytest.raises(EslNotConnected):
        conn.command("api echo b", 2)


def test_refused_port_fails_fast():
    with socket.socket() as holder:  # bound, never listening: refused, and nobody else gets the port
        holder.bind(("127.0.0.1", 0))
        rec = Recorder()
        with pytest.raises(EslConnectError, match="connect to 127.0.0.1"):
            make_conn(holder.getsockname()[1], rec).open(None, "ClueCon")


def test_silent_peer_bounded_by_connect_timeout():
    def silent(sock, addr):
        gevent.sleep(5)

    server = raw_server(silent)
    try:
        rec = Recorder()
        t0 = time.monotonic()
        with pytest.raises(EslConnectError, match="sent nothing within .* waited for the auth/request greeting"):
            make_conn(server.server_port, rec, connect_timeout=0.3).open(None, "ClueCon")
        assert time.monotonic() - t0 < 1.0
    finally:
        server.stop(timeout=0)


@pytest.mark.parametrize("greeting,match", [
    (b"SSH-2.0-OpenSSH_9.6\n\n", "did not greet"),
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "closed the connection"),
    (b"Content-Length: -3\n\n", "protocol error"),
    (b"", "closed the connection"),
])
def test_peer_that_is_not_esl(greeting, match):
    def speak(sock, addr):
        sock.sendall(greeting)
        gevent.sleep(0.5) if greeting else None

    server = raw_server(speak)
    try:
        with pytest.raises(EslConnectError, match=match):
            make_conn(server.server_port, Recorder()).open(None, "ClueCon")
    finally:
        server.stop(timeout=0)


def test_wrong_password_is_an_auth_error(box):
    with pytest.raises(EslAuthError, match="-ERR invalid") as info:
        make_conn(box.port, Recorder()).open(None, "nope")
    assert "nope" not in str(info.value)


def test_pipelined_fifo_with_abandoned_slots(box):
    conn = make_conn(box.port, Recorder())
    conn.open(None, "ClueCon")
    box.delay(150)
    first = conn.send("api echo 1")
    second = conn.send("api echo 2")
    third = conn.send("api echo 3")
    with pytest.raises(EslTimeout):
        conn.wait(first, 0.05)
    with pytest.raises(EslTimeout):
        conn.wait(second, 0.05)
    assert conn.wait(third, 2).body == b"3"  # never the reply of 1 or 2
    assert conn.late_replies == 2 and conn.outstanding == 0
    conn.close()


def test_disconnect_notice_fails_every_pending_command_at_once(box):
    rec = Recorder()
    conn = make_conn(box.port, rec)
    conn.open(None, "ClueCon")
    box.delay(3000)
    waiters = [conn.send(f"api echo {i}") for i in range(3)]
    gevent.sleep(0.05)
    box.push_raw(b"Content-Type: text/disconnect-notice\nContent-Length: 31\n\nThe system is being shut down.\n")
    t0 = time.monotonic()
    for waiter in waiters:
        with pytest.raises(EslNotConnected, match="The system is being shut down"):
            conn.wait(waiter, 5)
    assert time.monotonic() - t0 < 0.5
    assert rec.lost and "disconnect notice" in rec.lost[0]
    box.delay(0)


def test_linger_notice_is_not_a_disconnect(box):
    rec = Recorder()
    conn = make_conn(box.port, rec)
    conn.open(None, "ClueCon")
    box.push_raw(b"Content-Type: text/disconnect-notice\nContent-Disposition: linger\nContent-Length: 0\n\n")
    assert conn.command("api echo still", 2).body == b"still"
    assert [f.content_type for f in rec.frames] == ["text/disconnect-notice"] and rec.lost == []
    conn.close()


def test_eof_inside_a_frame_is_reported():
    def truncated(sock, addr):
        sock.sendall(b"Content-Type: auth/request\n\n")
        sock.recv(100)
        sock.sendall(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"
                     b"Content-Length: 100\nContent-Type: text/event-json\n\n{\"Event-Na")
        sock.close()

    server = raw_server(truncated)
    try:
        rec = Recorder()
        conn = make_conn(server.server_port, rec)
        conn.open(None, "ClueCon")
        conn.closed.wait(2)
        assert rec.lost == ["EOF from FreeSWITCH inside a frame"]
    finally:
        server.stop(timeout=0)


def test_liveness_probe_then_drop(box):
    rec = Recorder()
    conn = make_conn(box.port, rec, liveness_timeout=0.6, idle_probe=0.2)
    conn.open(None, "ClueCon")
    gevent.sleep(0.25)
    conn.check_liveness()  # idle: probed
    wait = time.monotonic() + 2
    while PROBE_COMMAND not in box.clients[0].commands and time.monotonic() < wait:
        gevent.sleep(0.01)
    assert box.clients[0].commands[-1] == PROBE_COMMAND
    gevent.sleep(0.05)
    conn.check_liveness()
    assert conn.connected  # the probe was answered: alive
    box.stall(2)
    gevent.sleep(0.3)
    conn.check_liveness()  # idle again: a second probe, unanswered
    gevent.sleep(0.5)
    conn.check_liveness()
    assert not conn.connected and "no data from FreeSWITCH" in rec.lost[0]


def test_tcp_keepalive_is_on(box):
    import socket as stdsocket

    conn = make_conn(box.port, Recorder(), liveness_timeout=30)
    conn.open(None, "ClueCon")
    sock = conn._sock
    assert sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_KEEPALIVE) == 1
    if hasattr(stdsocket, "TCP_KEEPIDLE"):
        idle = sock.getsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_KEEPIDLE)
        interval = sock.getsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_KEEPINTVL)
        count = sock.getsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_KEEPCNT)
        assert idle + interval * count <= 30  # a vanished peer is noticed within 30 s
    if hasattr(stdsocket, "TCP_USER_TIMEOUT"):
        assert sock.getsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_USER_TIMEOUT) == 30000
    conn.close()

"""EVI against hostile or broken subscribers (issue 11), real sockets on
127.0.0.1: one destination's failure stays its own, destinations are told
apart by their whole address, bad addresses are refused at subscribe time,
responses and queues are bounded by us, nothing is lost silently, log lines
carry the transport's module name."""

import json
import logging
import socket
import struct
import time

import gevent
import pytest
from gevent import socket as gsocket

from support import golden
from opensips_fs import logs
from opensips_fs.config import EventHttpSettings, EventXmlRpcSettings, EviTransportSettings
from opensips_fs.evi.registry import EviRegistry
from support.sink import HttpSink, TcpSink, UdpSink, split_documents
from opensips_fs.mi.registry import MiRegistry
from opensips_fs.stats import Stats

from test_evi_delivery import XmlRpcListener, body, dead_port, seqs, stat


def registry(queue_size=100000, queue_bytes=16 << 20, total=64 << 20, drain_timeout=3):
    settings = dict(queue_size=queue_size, queue_bytes=queue_bytes, drain_timeout=drain_timeout)
    evi = EviRegistry(Stats(), {"event_datagram": EviTransportSettings(**settings),
                                "event_stream": EviTransportSettings(**settings),
                                "event_xmlrpc": EventXmlRpcSettings(**settings),
                                "event_http": EventHttpSettings(**settings)},
                      total_queue_bytes=total)
    evi.start()
    return evi


def wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.01)
    return True


# -- isolation -----------------------------------------------------------------

@pytest.mark.timeout(20)
def test_non_ascii_xmlrpc_path_does_not_silence_the_others(caplog):
    """Building the café request raised inside the raise loop: the UDP
    subscriber after it got 0 of 200 and a traceback was logged per event."""
    evi = registry()
    listener = XmlRpcListener()
    udp = UdpSink()
    try:
        with caplog.at_level(logging.WARNING, logger="opensips_fs"):
            evi.subscribe("E_FREESWITCH", udp.socket, 3600)
            evi.subscribe("E_FREESWITCH", f"xmlrpc:127.0.0.1:{listener.port}/café:notify", 3600)
            for i in range(200):
                evi.raise_freeswitch("CHANNEL_STATE", "h", body(i))
                if i % 20 == 0:
                    gevent.sleep(0)
            assert udp.wait_for(200)
            assert seqs(udp) == list(range(200))
            assert listener.wait_for(200, timeout=10)
        assert all(r.startswith("POST /café HTTP/1.1\r\n".encode()) for r in listener.requests)
        assert stat(evi, "notifications_sent") == 400
        assert stat(evi, "send_errors") == 0
        assert "Traceback" not in caplog.text and not [
            r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        evi.stop()
        listener.close()
        udp.close()


@pytest.mark.timeout(20)
def test_http_subscribers_with_different_paths_are_two_destinations():
    """Two http:// subscribers of one host:port with paths /alpha and /beta:
    every event went twice to /alpha and never to /beta."""
    evi = registry()
    http = HttpSink()
    try:
        base = f"http://127.0.0.1:{http.port}"
        evi.subscribe("E_FREESWITCH", base + "/alpha", 3600)
        evi.subscribe("E_FREESWITCH", base + "/beta", 3600)
        for i in range(20):
            evi.raise_freeswitch("CHANNEL_STATE", "h", body(i))
        assert http.wait_for(40)
        gevent.sleep(0.1)
        paths = [r["path"] for r in http.requests]
        assert sorted(paths) == ["/alpha"] * 20 + ["/beta"] * 20
        labels = sorted(d["socket"] for d in evi.status())
        assert labels == [base + "/alpha", base + "/beta"]
    finally:
        evi.stop()
        http.close()


# -- addresses checked at event_subscribe ------------------------------------------

def _golden_400() -> bytes:
    scenario = json.loads((golden.golden_dir("opensips") / "evi_event_subscribe.json").read_text())
    for exchange in scenario["exchanges"]:
        if exchange["label"] == "unknown transport":
            return exchange["response_body"].encode("latin-1")
    raise AssertionError("no 'unknown transport' exchange in the recording")


BAD_SOCKETS = [
    # an xmlrpc path smuggling a second request
    "xmlrpc:127.0.0.1:{port}/RPC2 HTTP/1.1\r\nHost: x\r\n\r\nGET /admin:notify",
    "xmlrpc:127.0.0.1:{port}/a\nb:notify",
    "http://127.0.0.1:{port}/a b",
    "http://127.0.0.1:{port}/a\tb",
    "http://127.0.0.1:{port}/a\x01b",
    "http://127.0.0.1:{port}/a\x7fb",
    "tcp:127.0.0.1:{port}/me thod",
    "udp:127.0.0.1 :{port}",
    "unix:/tmp/a\rb",
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("socket_text", BAD_SOCKETS)
def test_addresses_with_spaces_or_control_characters_are_refused(socket_text):
    evi = registry()
    mi = MiRegistry(evi.stats)
    mi.register(evi.mi_commands())
    listener = XmlRpcListener()
    try:
        text = socket_text.format(port=listener.port)
        request = json.dumps({"jsonrpc": "2.0", "method": "event_subscribe",
                              "params": {"event": "E_FREESWITCH", "socket": text}, "id": 5})
        assert mi.handle(request.encode()) == _golden_400()
        reply = mi.handle(b'{"jsonrpc":"2.0","method":"subscribers_list","id":1}')
        assert reply is not None
        listed = json.loads(reply)
        assert listed["result"] == {"Events": []}
        assert evi.destinations() == []
        evi.raise_event("E_FREESWITCH", [("x", "y")])
        gevent.sleep(0.2)
        assert listener.requests == []
    finally:
        evi.stop()
        listener.close()


# -- responses bounded by us -------------------------------------------------------

class HostileHttp:
    """An HTTP server answering every request with `reply` (bytes, written
    once, or byte by byte `pause` seconds apart) followed by `then()` chunks
    until it wrote `cap` bytes (then it holds the connection open), counting
    what it wrote."""

    cap = 64 << 20

    def __init__(self, reply: bytes, then=None, pause: float = 0.0):
        self.sock = gsocket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.reply, self.then, self.pause = reply, then, pause
        self.requests = 0
        self.written = 0
        self.closed_by_peer = 0
        self._greenlets: list[gevent.Greenlet] = [gevent.spawn(self._accept)]

    def _accept(self):
        while True:
            conn, _ = self.sock.accept()
            self._greenlets.append(gevent.spawn(self._serve, conn))

    def _serve(self, conn):
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests += 1
            for out in ([bytes([byte]) for byte in self.reply] if self.pause else [self.reply]):
                conn.sendall(out)
                self.written += len(out)
                if self.pause:
                    gevent.sleep(self.pause)
            while self.then is not None:
                if self.written >= self.cap:
                    gevent.sleep(60)
                out = self.then()
                conn.sendall(out)
                self.written += len(out)
        except OSError:
            self.closed_by_peer += 1
        finally:
            conn.close()

    def close(self):
        gevent.killall(self._greenlets)
        self.sock.close()


@pytest.mark.timeout(30)
def test_endless_chunked_response_is_cut_not_buffered():
    """The whole body was read (+136 MB, for ever); now at most a small part
    is, and the connection is closed."""
    chunk = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
    server = HostileHttp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                         then=lambda: chunk)
    evi = registry()
    try:
        evi.subscribe("E_FREESWITCH", f"http://127.0.0.1:{server.port}/hook", 3600)
        evi.raise_freeswitch("DTMF", "h", b"{}")
        dest = evi.destinations()[0]
        assert wait(lambda: server.closed_by_peer >= 1, timeout=8)
        assert wait(lambda: dest.sent == 1)
        # what it could write is what fits the socket buffers, not what it wanted
        assert server.written < 32 << 20
        evi.raise_freeswitch("DTMF", "h", b"{}")
        assert wait(lambda: dest.sent == 2)
        assert server.requests == 2
    finally:
        evi.stop()
        server.close()


@pytest.mark.timeout(30)
def test_a_response_dribbled_byte_by_byte_times_out_as_a_whole():
    """One byte every 0.5 s never trips a per-read timeout: the whole
    exchange has its own."""
    server = HostileHttp(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100,
                         pause=0.5)
    evi = registry()
    try:
        evi.subscribe("E_FREESWITCH", f"http://127.0.0.1:{server.port}/hook", 3600)
        started = time.monotonic()
        evi.raise_freeswitch("DTMF", "h", b"{}")
        dest = evi.destinations()[0]
        assert wait(lambda: dest.send_errors >= 1, timeout=8)
        assert time.monotonic() - started < 7
        assert "no complete response within" in dest.last_error
        assert dest.sent == 0 and dest.queued == 1          # kept for a retry
    finally:
        evi.stop()
        server.close()


# -- queues bounded by events and bytes -----------------------------------------

class NeverReads:
    """A TCP subscriber that accepts and never reads (small receive buffer)."""

    def __init__(self):
        self.sock = gsocket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.socket = f"tcp:127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns = []
        self._greenlet = gevent.spawn(self._accept)

    def _accept(self):
        while True:
            self.conns.append(self.sock.accept()[0])

    def close(self):
        self._greenlet.kill()
        for conn in self.conns:
            conn.close()
        self.sock.close()


def big_body(i):
    return json.dumps({"Event-Name": "CHANNEL_STATE", "Seq": str(i), "Pad": "x" * 2500}).encode()


@pytest.mark.timeout(30)
def test_queues_are_bounded_by_bytes_per_destination_and_per_process():
    """A subscriber that never reads held 100,000 events (+264 MB); now its
    queue keeps to queue_bytes, all queues together to the process budget,
    every drop is counted, and a fast subscriber loses nothing."""
    evi = registry(queue_bytes=1 << 20, total=3 << 19)      # 1 MiB each, 1.5 MiB in all
    slow1, slow2, udp = NeverReads(), NeverReads(), UdpSink()
    try:
        for s in (slow1.socket, slow2.socket, udp.socket):
            evi.subscribe("E_FREESWITCH", s, 3600)
        total = 3000                                        # ~7.7 MB per destination
        for i in range(total):
            evi.raise_freeswitch("CHANNEL_STATE", "h", big_body(i))
            if i % 50 == 0:
                gevent.sleep(0)
                assert evi.budget.used <= 3 << 19
        assert udp.wait_for(total, timeout=10)
        assert seqs(udp) == list(range(total))
        by_label = {d.label: d for d in evi.destinations()}
        fast = by_label[udp.socket]
        assert fast.dropped == 0
        for sub in (slow1, slow2):
            dest = by_label[sub.socket]
            assert dest.queue.bytes <= 1 << 20
            assert dest.dropped > 0
            # every event is sent, still queued or counted as dropped
            written = dest.sent
            assert written + dest.queued + dest.dropped == total
        assert evi.budget.used <= 3 << 19
        assert stat(evi, "notifications_dropped") == sum(
            d.dropped for d in evi.destinations())
    finally:
        evi.stop()
        for sink in (slow1, slow2, udp):
            sink.close()


def test_a_payload_bigger_than_its_queue_is_dropped_alone():
    evi = registry(queue_bytes=4096)
    with dead_port() as holder:
        evi.subscribe("E_FREESWITCH", f"tcp:127.0.0.1:{holder.getsockname()[1]}", 3600)
        evi.raise_freeswitch("SMALL", "h", b"{}")
        evi.raise_freeswitch("BIG", "h", b'"' + b"x" * 8192 + b'"')
        dest = evi.destinations()[0]
        assert dest.queued == 1 and dest.dropped == 1
    evi.stop()


# -- a TCP subscriber that resets its connection -------------------------------------

def _inq(conn) -> int:
    import fcntl
    import termios
    return struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


class ResettingSubscriber:
    """Reads the first connection until it has `read_first` documents, stops
    reading until the flow stalls (its receive window closed), peeks what
    its kernel holds (acknowledged bytes: they count as received), then
    resets the connection (SO_LINGER 0). Later connections are read fully."""

    def __init__(self, read_first: int):
        self.listener = gsocket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.socket = f"tcp:127.0.0.1:{self.listener.getsockname()[1]}"
        self.read_first = read_first
        self.docs: list = []
        self.reset_done = False
        self.connections = 0
        self._greenlets: list[gevent.Greenlet] = [gevent.spawn(self._accept)]

    def _accept(self):
        while True:
            conn, _ = self.listener.accept()
            self.connections += 1
            self._greenlets.append(gevent.spawn(
                self._first if self.connections == 1 else self._read, conn))

    def _parse(self, buffer: str) -> str:
        docs, rest = split_documents(buffer)
        self.docs += docs
        return rest

    def _first(self, conn):
        buffer = ""
        while len(self.docs) < self.read_first:
            buffer = self._parse(buffer + conn.recv(4096).decode())
        # stop reading until nothing more arrives (zero window)
        last = -1
        while _inq(conn) != last:
            last = _inq(conn)
            gevent.sleep(0.3)
        held = conn.recv(1 << 24, socket.MSG_PEEK).decode()
        self._parse(buffer + held)          # a last partial document is not received
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        self.reset_done = True

    def _read(self, conn):
        buffer = ""
        while True:
            data = conn.recv(1 << 20)
            if not data:
                return
            buffer = self._parse(buffer + data.decode())

    def seqs(self):
        return {int(json.loads(d["params"]["body"])["Seq"]) for d in self.docs}

    def close(self):
        gevent.killall(self._greenlets)
        self.listener.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("total, read_first", [(50000, 2000), (1500, 300)])
def test_tcp_reset_loses_nothing_silently(total, read_first, caplog):
    """1,611 of 50,000 events were lost, evi_status saying sent=50,000,
    send_errors=0, nothing logged. Now what the peer had not acknowledged
    is written again on the next connection. (50,000: the sender is blocked
    in a write when the reset comes; 1,500: everything was written and the
    sender is idle.)"""
    evi = registry(queue_bytes=96 << 20, total=96 << 20)    # room for all: no overflow
    sub = ResettingSubscriber(read_first)
    try:
        with caplog.at_level(logging.WARNING, logger="opensips_fs"):
            evi.subscribe("E_FREESWITCH", sub.socket, 3600)
            for i in range(total):
                evi.raise_freeswitch("CHANNEL_STATE", "h", body(i))
                if i % 100 == 0:
                    gevent.sleep(0)
            assert wait(lambda: sub.reset_done, timeout=20)
            dest = evi.destinations()[0]
            # every event is received or counted as dropped
            assert wait(lambda: len(sub.seqs()) + dest.dropped == total, timeout=20), \
                f"{total - len(sub.seqs()) - dest.dropped} events neither received nor counted"
        assert dest.dropped == 0 and dest.queued == 0
        assert dest.send_errors >= 1 or dest.retried >= 1
        assert dest.retried >= 1                      # something was written again
        assert sub.connections == 2
        assert "EVI tcp:127.0.0.1" in caplog.text     # the failure was logged
    finally:
        evi.stop()
        sub.close()


# -- shutdown: a bounded drain ----------------------------------------------------------

@pytest.mark.timeout(30)
def test_stop_gives_the_queues_time_to_drain(caplog):
    evi = registry(drain_timeout=4)
    sink = TcpSink()
    sink.pause()                                       # away: the events queue up
    away = dead_port()
    try:
        evi.subscribe("E_FREESWITCH", sink.socket, 3600)
        evi.subscribe("E_FREESWITCH", f"tcp:127.0.0.1:{away.getsockname()[1]}", 3600)
        for i in range(30):
            evi.raise_freeswitch("CHANNEL_STATE", "h", body(i))
        gevent.sleep(0.3)
        gevent.spawn_later(1.0, sink.resume)           # back while we stop
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="opensips_fs"):
            evi.stop()
        took = time.monotonic() - started
        assert 3.5 < took < 6                          # the unreachable one had its 4 s
        assert sink.wait_for(30, timeout=1)
        assert seqs(sink) == list(range(30))
        assert stat(evi, "notifications_dropped") == 30     # the unreachable one's
        assert "stopped with 30 undelivered notifications" in caplog.text
    finally:
        sink.close()
        away.close()


# -- log lines carry the module name ----------------------------------------------------

@pytest.mark.timeout(20)
def test_evi_log_lines_carry_their_module_name(caplog):
    evi = registry()
    udp = UdpSink()
    holder = dead_port()
    try:
        with caplog.at_level(logging.WARNING, logger="opensips_fs"):
            evi.subscribe("E_FREESWITCH", udp.socket, 3600)
            evi.subscribe("E_FREESWITCH", f"tcp:127.0.0.1:{holder.getsockname()[1]}", 3600)
            evi.subscribe("E_FREESWITCH", f"http://127.0.0.1:{holder.getsockname()[1]}/x", 3600)
            evi.subscribe("E_FREESWITCH", f"xmlrpc:127.0.0.1:{holder.getsockname()[1]}:m", 3600)
            evi.raise_freeswitch("BIG", "h", b'"' + b"y" * 70000 + b'"')
            assert wait(lambda: all(d.send_errors for d in evi.destinations()))
        formatter = logs.OpenSipsFormatter(with_time=False)
        modules = {formatter.format(r).split(":")[1] for r in caplog.records
                   if "EVI " in r.getMessage()}
        assert modules == {"event_datagram", "event_stream", "event_http", "event_xmlrpc"}
    finally:
        evi.stop()
        udp.close()
        holder.close()


@pytest.mark.timeout(20)
def test_a_repeated_error_is_logged_at_a_limited_rate(caplog):
    evi = registry()
    udp = UdpSink()
    try:
        with caplog.at_level(logging.WARNING, logger="opensips_fs"):
            evi.subscribe("E_FREESWITCH", udp.socket, 3600)
            for _ in range(200):
                evi.raise_freeswitch("BIG", "h", b'"' + b"y" * 70000 + b'"')
            dest = evi.destinations()[0]
            assert wait(lambda: dest.send_errors == 200)
        lines = [r for r in caplog.records if "too big" in r.getMessage()]
        assert len(lines) == 1
    finally:
        evi.stop()
        udp.close()

"""EVI delivery over real sockets: reconnect and backlog, queue bounds and
drop counts, many subscribers, several transports at once, tcp /method and
jsonrpc sharing one connection, oversized datagrams, unix, xmlrpc bytes."""

import json
import os
import socket
import time

import gevent
import pytest
from gevent import socket as gsocket

from opensips_fs import config
from opensips_fs.config import EventHttpSettings, EventXmlRpcSettings, EviTransportSettings
from opensips_fs.evi.delivery import BACKOFF_MAX
from opensips_fs.evi.registry import EviRegistry
from support.sink import HttpSink, TcpSink, UdpSink
from opensips_fs.stats import Stats
from support.waits import assert_never, wait_until


def transports(queue_size=100000) -> dict:
    """Every EVI transport module loaded, with the config's own settings classes."""
    return {"event_datagram": EviTransportSettings(queue_size=queue_size),
            "event_stream": EviTransportSettings(queue_size=queue_size),
            "event_xmlrpc": EventXmlRpcSettings(queue_size=queue_size),
            "event_http": EventHttpSettings(queue_size=queue_size)}


def registry(queue_size=100000):
    stats = Stats()
    evi = EviRegistry(stats, transports(queue_size))
    evi.start()
    return evi


def body(i):
    return json.dumps({"Event-Name": "CHANNEL_STATE", "Seq": str(i),
                       "Pad": "x" * 900}).encode()


def seqs(sink):
    return [int(json.loads(d["params"]["body"])["Seq"]) for d in sink.documents()]


def stat(evi, name):
    return evi.stats.counter("evi", name).value


def raise_spread(evi, first, count, seconds):
    """Raise `count` events evenly over `seconds` (the subscriber is away)."""
    for i in range(first, first + count):
        evi.raise_freeswitch("CHANNEL_STATE", "127.0.0.1", body(i))
        gevent.sleep(seconds / count)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("away", [5.0, 4.0])
@pytest.mark.parametrize("kind", ["tcp", "http"])
def test_subscriber_away_gets_every_event(kind, away):
    evi = registry()
    sink = TcpSink() if kind == "tcp" else HttpSink()
    try:
        evi.subscribe("E_FREESWITCH", sink.socket, 3600)
        raise_spread(evi, 0, 10, 0.1)
        assert sink.wait_for(10)
        sink.pause()
        # 5 s away is the scenario. 4 s catches an uncapped backoff:
        # retries 0.05 s apart doubling would be at 1.55, 3.15 and 6.35 s,
        # i.e. > 2 s after the sink is back; capped at 1 s they never are
        # (after 5 s away an uncapped retry would fall 1.35 s later and pass).
        raise_spread(evi, 10, 100, away)
        assert len(sink.payloads) == 10
        sink.resume()
        back = time.monotonic()
        assert sink.wait_for(110, timeout=3.0)
        assert time.monotonic() - back < 1.5      # backoff is capped at 1 s
        raise_spread(evi, 110, 5, 0.05)
        assert sink.wait_for(115)
        got = seqs(sink)
        # at-least-once: a batch cut by the close may come twice, never out of order
        assert sorted(set(got)) == list(range(115))
        assert got == sorted(got)
        dest = evi.destinations()[0]
        assert dest.dropped == 0 and stat(evi, "notifications_dropped") == 0
        assert dest.send_errors >= 1 and stat(evi, "send_errors") == dest.send_errors
        assert dest.sent >= 115
    finally:
        evi.stop()
        sink.close()


def dead_port() -> socket.socket:
    """A socket bound to an ephemeral port and never listening: connections
    to the port are refused, and, unlike a port bound then released, no other
    socket on the machine can be handed it meanwhile (a listener there took
    a notification once). A sink (SO_REUSEADDR) may bind the port alongside."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    return holder


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["tcp", "http"])
def test_beyond_the_bound_drops_are_counted_exactly(kind):
    evi = registry(queue_size=10)
    holder = dead_port()
    port = holder.getsockname()[1]
    socket_text = (f"tcp:127.0.0.1:{port}" if kind == "tcp"
                   else f"http://127.0.0.1:{port}/events")
    evi.subscribe("E_FREESWITCH", socket_text, 3600)
    evi.raise_freeswitch("CHANNEL_STATE", "127.0.0.1", body(0))
    gevent.sleep(0.2)                     # the sender has failed to connect
    for i in range(1, 25):
        evi.raise_freeswitch("CHANNEL_STATE", "127.0.0.1", body(i))
    dest = evi.destinations()[0]
    assert len(dest.queue) == 10 and dest.dropped == 15 - len(dest.inflight)
    sink = (TcpSink if kind == "tcp" else HttpSink)(port=port)
    holder.close()
    try:
        received_expected = 10 + len(dest.inflight)
        assert sink.wait_for(received_expected, timeout=3)
        # a payload still to come would be (re)sent within the longest retry gap
        assert_never(lambda: len(sink.payloads) > received_expected, during=BACKOFF_MAX,
                     what="a payload beyond the queue bound")
        got = seqs(sink)
        assert got[-10:] == list(range(15, 25))
        assert len(got) + dest.dropped == 25
        assert dest.dropped == stat(evi, "notifications_dropped") == 25 - len(got)
        assert dest.queued == 0
    finally:
        evi.stop()
        sink.close()


@pytest.mark.timeout(20)
def test_50_udp_subscribers_get_every_event_in_order():
    evi = registry()
    sinks = [UdpSink() for _ in range(50)]
    try:
        for sink in sinks:
            evi.subscribe("E_FREESWITCH", sink.socket, 3600)
        for i in range(200):
            evi.raise_freeswitch("CHANNEL_STATE", "127.0.0.1", body(i))
            if i % 20 == 0:
                gevent.sleep(0)
        for sink in sinks:
            assert sink.wait_for(200)
            assert seqs(sink) == list(range(200))
        assert stat(evi, "notifications_sent") == 50 * 200
    finally:
        evi.stop()
        for sink in sinks:
            sink.close()


@pytest.mark.timeout(20)
def test_all_transports_at_once(tmp_path):
    evi = registry()
    udp, tcp, http = UdpSink(), TcpSink(), HttpSink()
    unix_path = str(tmp_path / "evi.sock")
    unix = gsocket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unix.bind(unix_path)
    unix_got: list[bytes] = []

    def read() -> None:
        while True:
            unix_got.append(unix.recv(65536))

    reader = gevent.spawn(read)
    try:
        for s in (udp.socket, tcp.socket, http.socket, f"unix:{unix_path}"):
            evi.subscribe("E_FREESWITCH", s, 3600)
        for i in range(300):
            evi.raise_freeswitch("CHANNEL_STATE", "127.0.0.1", body(i))
            if i % 50 == 0:
                gevent.sleep(0)
        for sink in (udp, tcp, http):
            assert sink.wait_for(300)
            assert seqs(sink) == list(range(300))
        deadline = time.monotonic() + 3
        while len(unix_got) < 300 and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert unix_got == udp.payloads            # same bytes on every transport
        assert b"".join(tcp.chunks) == b"".join(udp.payloads)
        assert http.payloads == udp.payloads
        assert {r["method"] for r in http.requests} == {"POST"}
        assert {r["content_type"] for r in http.requests} == {"application/json"}
        assert {r["path"] for r in http.requests} == {"/events"}
    finally:
        reader.kill()
        unix.close()
        evi.stop()
        for sink in (udp, tcp, http):
            sink.close()


@pytest.mark.timeout(10)
def test_tcp_method_override_and_jsonrpc_alias_share_one_connection():
    evi = registry()
    tcp = TcpSink()
    try:
        evi.subscribe("E_FREESWITCH", tcp.socket, 3600)
        evi.subscribe("E_FREESWITCH", f"jsonrpc:127.0.0.1:{tcp.port}/fs_event", 3600)
        evi.raise_freeswitch("DTMF", "fs1", b'{"Event-Name":"DTMF"}')
        assert tcp.wait_for(2)
        tail = b',"params":{"name":"DTMF","sender":"fs1","body":"{\\"Event-Name\\":\\"DTMF\\"}"}}'
        assert b"".join(tcp.chunks) == (
            b'{"jsonrpc":"2.0","method":"fs_event"' + tail
            + b'{"jsonrpc":"2.0","method":"E_FREESWITCH"' + tail)
        assert tcp.connections == 1
        assert len(evi.destinations()) == 1
    finally:
        evi.stop()
        tcp.close()


@pytest.mark.timeout(10)
def test_oversized_datagram_is_counted_not_cut():
    evi = registry()
    udp = UdpSink()
    try:
        evi.subscribe("E_FREESWITCH", udp.socket, 3600)
        evi.raise_freeswitch("BIG", "h", b'{"Event-Name":"BIG","x":"' + b"y" * 70000 + b'"}')
        evi.raise_freeswitch("DTMF", "h", b"{}")
        assert udp.wait_for(1)  # BIG went first (in order): had it been sent, it would be payload 0
        assert len(udp.payloads) == 1 and b'"DTMF"' in udp.payloads[0]
        dest = evi.destinations()[0]
        assert dest.send_errors == 1 == stat(evi, "send_errors")
        assert "too big" in dest.last_error
    finally:
        evi.stop()
        udp.close()


@pytest.mark.timeout(10)
def test_any_bytes_never_crash_and_round_trip():
    evi = registry()
    udp = UdpSink()
    try:
        evi.subscribe("E_FREESWITCH", udp.socket, 3600)
        bodies = [b"", b"not json", b"\xff\xfe\x00\x01", bytes(range(256)),
                  '{"Event-Name":"caf\u00e9 \u2603"}'.encode()]
        for b in bodies:
            evi.raise_freeswitch("X", "h", b)
        assert udp.wait_for(len(bodies))
        for b, payload in zip(bodies, udp.payloads):
            text = json.loads(payload.decode("utf-8", "surrogateescape"))["params"]["body"]
            assert text.encode("utf-8", "surrogateescape") == b
    finally:
        evi.stop()
        udp.close()


def test_no_subscriber_costs_nothing():
    evi = registry()
    evi.raise_freeswitch("DTMF", "h", b"{}")
    assert evi.destinations() == []
    assert stat(evi, "notifications_sent") == 0


class XmlRpcListener:
    """A TCP listener on 127.0.0.1 keeping each connection's bytes (the
    notifier writes one request per connection, then closes)."""

    def __init__(self):
        self.sock = gsocket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.requests = []
        self._server = gevent.spawn(self._serve)

    def _serve(self):
        while True:
            conn, _ = self.sock.accept()
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            self.requests.append(data)
            conn.close()

    def wait_for(self, count, timeout=3.0):
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            gevent.sleep(0.01)
        return len(self.requests) >= count

    def close(self):
        self._server.kill()
        self.sock.close()


def xmlrpc_request(port, params_xml: bytes) -> bytes:
    """The bytes OpenSIPS's event_xmlrpc writes for E_FREESWITCH to method
    e_handler: the event name is the first, unnamed, string param."""
    body = (b'<?xml version="1.0"?>\n<methodCall>\n<methodName>e_handler</methodName>\n'
            b'<params>\n<param>\n<value><string>E_FREESWITCH</string></value>\n</param>\n'
            + params_xml + b'</params>\n</methodCall>')
    head = (f"POST /RPC2 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
            "User-Agent: OpenSIPS XMLRPC Notifier\r\nContent-type: text/xml\r\n"
            f"Content-length: {len(body)}\r\n\r\n").encode()
    return head + body


@pytest.mark.timeout(10)
def test_xmlrpc_request_bytes():
    evi = registry()
    listener = XmlRpcListener()
    try:
        evi.subscribe("E_FREESWITCH", f"xmlrpc:127.0.0.1:{listener.port}:e_handler", 3600)
        evi.raise_freeswitch("DTMF", "fs1", b'{"a":"<&>"}')
        assert listener.wait_for(1)
        params = (b'<param>\n<name>name</name>\n<value><string>DTMF</string></value>\n</param>\n'
                  b'<param>\n<name>sender</name>\n<value><string>fs1</string></value>\n</param>\n'
                  b'<param>\n<name>body</name>\n<value><string>{"a":"&lt;&amp;&gt;"}'
                  b'</string></value>\n</param>\n')
        assert listener.requests == [xmlrpc_request(listener.port, params)]
    finally:
        listener.close()
        evi.stop()


def _member(name: bytes, value: bytes) -> bytes:
    return (b"<param>\n<value><struct><member>\n<name>" + name + b"</name>\n<value><string>"
            + value + b"</string></value>\n</member></struct></value>\n</param>\n")


def _plain(name: bytes, value: bytes) -> bytes:
    return (b"<param>\n<name>" + name + b"</name>\n<value><string>" + value
            + b"</string></value>\n</param>\n")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("use_struct_param, param", [("0", _plain), ("1", _member)])
def test_xmlrpc_use_struct_param_from_the_config(tmp_path, use_struct_param, param):
    """Commit 32fa388: modparam("event_xmlrpc","use_struct_param",1) could not
    be set. Set, each named param is wrapped as OpenSIPS's event_xmlrpc does
    (xmlrpc_build_buffer): <value><struct><member> + <name> + <value> +
    </member></struct></value> inside its own <param>; the event name stays
    a plain first param."""
    cfg = config.loads('loadmodule "event_xmlrpc.so"\n'
                       f'modparam("event_xmlrpc", "use_struct_param", {use_struct_param})\n',
                       str(tmp_path / "x.cfg"))
    evi = EviRegistry(Stats(), cfg.evi_transports())
    evi.start()
    listener = XmlRpcListener()
    try:
        evi.subscribe("E_FREESWITCH", f"xmlrpc:127.0.0.1:{listener.port}:e_handler", 3600)
        evi.raise_freeswitch("DTMF", "fs1", b'{"d":"1"}')
        assert listener.wait_for(1)
        params = param(b"name", b"DTMF") + param(b"sender", b"fs1") + param(b"body", b'{"d":"1"}')
        assert listener.requests == [xmlrpc_request(listener.port, params)]
    finally:
        listener.close()
        evi.stop()


@pytest.mark.timeout(10)
def test_http_non_2xx_is_retried_then_delivered():
    evi = registry()
    http = HttpSink()
    http.status = "503 Service Unavailable"
    try:
        evi.subscribe("E_FREESWITCH", http.socket, 3600)
        evi.raise_freeswitch("DTMF", "h", b"{}")
        wait_until(lambda: len(http.requests) >= 2, timeout=3, what="the refused request retried")
        assert http.payloads == []
        http.status = "204 No Content"
        assert http.wait_for(1, timeout=2)
        dest = evi.destinations()[0]
        deadline = time.monotonic() + 2
        while dest.sent == 0 and time.monotonic() < deadline:
            gevent.sleep(0.01)      # the reply is on its way back to the sender
        assert dest.retried >= 2 and dest.sent == 1
        assert stat(evi, "notifications_retried") == dest.retried
        assert dest.last_error.startswith("HTTP 503")
    finally:
        evi.stop()
        http.close()


@pytest.mark.timeout(10)
def test_unsubscribe_drops_the_queue_at_once(caplog):
    """Issue 11: the queue of an unsubscribed destination stayed (and kept
    retrying) until the next raise; expire 0 now ends it at once, the
    undelivered notifications counted as dropped and logged."""
    evi = registry()
    with dead_port() as holder:
        socket_text = f"tcp:127.0.0.1:{holder.getsockname()[1]}"
        evi.subscribe("E_FREESWITCH", socket_text, 3600)
        for i in range(50):
            evi.raise_freeswitch("CHANNEL_STATE", "h", body(i))
        gevent.sleep(0.1)                       # the sender fails to connect
        dest = evi.destinations()[0]
        assert dest.queued == 50 and dest.running
        with caplog.at_level("WARNING", logger="opensips_fs"):
            evi.subscribe("E_FREESWITCH", socket_text, 0)
        assert evi.destinations() == []         # no raise needed
        assert dest.queued == 0 and not dest.running
        assert dest.dropped == 50 == stat(evi, "notifications_dropped")
        assert "unsubscribed with 50 undelivered notifications" in caplog.text
        assert evi.budget.used == 0
        errors = dest.send_errors
        gevent.sleep(0.3)
        assert dest.send_errors == errors       # no more retries
    evi.stop()


def test_stop_counts_what_was_never_delivered():
    evi = registry()
    with dead_port() as holder:
        evi.subscribe("E_FREESWITCH", f"tcp:127.0.0.1:{holder.getsockname()[1]}", 3600)
        for i in range(7):
            evi.raise_freeswitch("CHANNEL_STATE", "h", body(i))
        evi.stop()
    assert stat(evi, "notifications_dropped") == 7
    assert evi.destinations()[0].status()["dropped"] == 7


def make_cert(tmp_path):
    import subprocess
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


@pytest.mark.timeout(15)
@pytest.mark.skipif(not os.path.exists("/usr/bin/openssl"), reason="needs the openssl tool")
def test_https_verifies_certificates_unless_told_not_to(tmp_path):
    from gevent.pywsgi import WSGIServer
    cert, key = make_cert(tmp_path)
    received = []

    def app(environ, start_response):
        received.append(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    server = WSGIServer(("127.0.0.1", 0), app, certfile=cert, keyfile=key,
                        log=None, error_log=None)
    server.start()
    url = f"https://127.0.0.1:{server.server_port}/hook"
    strict = registry()
    lax = EviRegistry(Stats(), {"event_http": EventHttpSettings(queue_size=10, verify_cert=False)})
    lax.start()
    try:
        strict.subscribe("E_FREESWITCH", url, 3600)
        lax.subscribe("E_FREESWITCH", url, 3600)
        strict.raise_freeswitch("DTMF", "h", b"{}")
        lax.raise_freeswitch("DTMF", "h", b"{}")
        deadline = time.monotonic() + 5
        while (not received or not strict.destinations()[0].send_errors) \
                and time.monotonic() < deadline:
            gevent.sleep(0.02)
        assert len(received) == 1                       # only the lax one got through
        dest = strict.destinations()[0]
        assert dest.send_errors >= 1 and "CERTIFICATE_VERIFY_FAILED" in dest.last_error
        assert dest.queued == 1                         # kept for a retry
    finally:
        strict.stop()
        lax.stop()
        server.stop()

"""MI over real HTTP: keep-alive, bad requests of every kind, slow clients,
concurrency, auth, TLS, /health and /metrics."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import time

import gevent
import gevent.event
import pytest

from opensips_fs.mi import StartupError
from opensips_fs.mi.commands import MiCommand
from opensips_fs.config import MiHttpSettings
from opensips_fs.mi.http import MiHttpServer
from opensips_fs.stats import Stats
from support.mi import build_registry, http_exchange, httpd_settings, read_http_response, split_response
from support.scrape import Scrape
from support.waits import wait_until

pytestmark = pytest.mark.timeout(20)

VERSION = b'{"jsonrpc":"2.0","method":"version","id":1}'


def post(body: bytes, path=b"/mi", extra=b"", close=True) -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + extra +
            b"Content-Length: %d\r\n" % len(body) + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body)


def start(registry=None, stats=None, mi_root="mi", **overrides):
    stats = stats or Stats()
    registry = registry or build_registry(stats)
    server = MiHttpServer(httpd_settings(**overrides), MiHttpSettings(root=mi_root), registry, stats)
    server.start()
    server.stats = stats
    return server


@pytest.fixture
def server():
    srv = start(conn_timeout=1)
    yield srv
    srv.stop()


def test_keepalive_many_requests_one_connection(server):
    with socket.create_connection(server.address) as sock:
        buffer = bytearray()
        for i in range(50):
            body = b'{"jsonrpc":"2.0","method":"which","params":["fs_list"],"id":%d}' % i
            sock.sendall(post(body, close=False))
            status, headers, reply = split_response(read_http_response(sock, buffer))
            assert status == b"HTTP/1.1 200 OK"
            assert [h[0] for h in headers] == [b"Date", b"Content-Type", b"Content-Length"]
            assert reply == b'{"jsonrpc":"2.0","result":[[]],"id":%d}' % i


def test_pipelined_requests_answered_in_order(server):
    with socket.create_connection(server.address) as sock:
        sock.sendall(b"".join(post(b'{"jsonrpc":"2.0","method":"version","id":%d}' % i, close=False) for i in range(5)))
        buffer = bytearray()
        for i in range(5):
            assert read_http_response(sock, buffer).endswith(b'"id":%d}' % i)


def test_notification_202_keeps_connection(server):
    with socket.create_connection(server.address) as sock:
        buffer = bytearray()
        sock.sendall(post(b'{"jsonrpc":"2.0","method":"version"}', close=False))
        status, headers, body = split_response(read_http_response(sock, buffer))
        assert status == b"HTTP/1.1 202 Accepted" and body == b""
        assert (b"Content-Length", b"0") in headers
        sock.sendall(post(VERSION, close=False))
        assert read_http_response(sock, buffer).endswith(b'"id":1}')


@pytest.mark.parametrize("raw, status", [
    (b"GET /mi HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
    (b"PUT /mi HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", b"405"),
    (b"POST /mi HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"400"),
    (b"POST /other HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", b"404"),
    (b"POST /mix HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", b"404"),
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"POST /mi HTTP/1.1\r\nContent-Length: abc\r\n\r\n", b"400"),
    (b"POST /mi HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", b"400"),
    (b"POST /mi HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", b"501"),
    (b"POST /mi HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", b"400"),
    (b"POST /mi HTTP/2.0\r\n\r\n", b"505"),
    (b"POST /mi HTTP/1.1\r\n bad folding\r\n\r\n", b"400"),
])
def test_bad_requests_get_a_status_with_a_length(server, raw, status):
    with socket.create_connection(server.address, timeout=3) as sock:
        sock.sendall(raw)
        reply = read_http_response(sock, bytearray())
    assert reply.split(b" ")[1] == status
    assert b"Content-Length: 0\r\n" in reply
    assert b"chunked" not in reply


def test_405_allows_post(server):
    reply = http_exchange(server.address, b"GET /mi HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert b"\r\nAllow: POST\r\n" in reply


def test_body_over_limit_is_413_and_closed(server):
    raw = b"POST /mi HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (2 << 20)
    with socket.create_connection(server.address, timeout=3) as sock:
        sock.sendall(raw + b"{" * 1000)
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 413 Payload Too Large\r\n")
        assert b"Connection: close" in reply
        # the server closes: reads end
        sock.settimeout(2)
        rest = b""
        try:
            while chunk := sock.recv(65536):
                rest += chunk
        except ConnectionResetError:
            pass


def test_chunked_body_over_limit_is_413():
    srv = start(conn_timeout=2)
    srv.max_body = 1000
    try:
        raw = b"POST /mi HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n"
        with socket.create_connection(srv.address, timeout=3) as sock:
            sock.sendall(raw)
            assert read_http_response(sock, bytearray()).startswith(b"HTTP/1.1 413")
    finally:
        srv.stop()


def test_header_block_too_large_is_431(server):
    with socket.create_connection(server.address, timeout=3) as sock:
        sock.sendall(b"POST /mi HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        assert read_http_response(sock, bytearray()).startswith(b"HTTP/1.1 431")


def test_chunked_request_body(server):
    body = VERSION
    raw = (b"POST /mi HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
           b"%x\r\n" % 10 + body[:10] + b"\r\n" + b"%x;ext=1\r\n" % (len(body) - 10) + body[10:] + b"\r\n0\r\n\r\n")
    assert http_exchange(server.address, raw).endswith(b'"id":1}')


def test_expect_100_continue(server):
    with socket.create_connection(server.address, timeout=3) as sock:
        sock.sendall(b"POST /mi HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(VERSION))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(VERSION)
        assert read_http_response(sock, bytearray()).endswith(b'"id":1}')


def test_http10_closes_unless_keepalive(server):
    raw = b"POST /mi HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(VERSION) + VERSION
    reply = http_exchange(server.address, raw)
    assert b"Connection: close" in reply and reply.endswith(b'"id":1}')


def test_bare_connect_close_and_server_keeps_serving(server):
    for _ in range(5):
        socket.create_connection(server.address).close()
    assert http_exchange(server.address, post(VERSION)).endswith(b'"id":1}')


def test_unknown_method_and_invalid_json_bodies(server):
    assert http_exchange(server.address, post(b'{"jsonrpc":"2.0","method":"nope","id":"s"}')).endswith(
        b'{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":"s"}')
    assert http_exchange(server.address, post(b"\xff\xfe garbage")).endswith(
        b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}')
    assert http_exchange(server.address, post(b"[" * 100000)).endswith(
        b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}')


def test_slow_client_is_cut_off_while_others_are_served(server):
    """A client that never finishes its request gets 408 after conn_timeout
    (1 s here); meanwhile other clients are answered at once."""
    slow = socket.create_connection(server.address, timeout=5)
    slow.sendall(b"POST /mi HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"")
    started = time.monotonic()
    for i in range(20):
        assert http_exchange(server.address, post(VERSION)).endswith(b'"id":1}')
    assert time.monotonic() - started < 0.9
    reply = slow.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 3
    slow.close()
    assert server.stats.counter("mi", "http_timeouts").value == 1


def test_dribbling_client_cannot_extend_its_deadline(server):
    """One byte every 0.2 s never resets the per-request deadline."""
    sock = socket.create_connection(server.address, timeout=5)
    started = time.monotonic()
    reply = b""
    for byte in b"POST /mi HTTP/1.1\r\nContent-Length: 10\r\n":
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        sock.settimeout(0.2)
        try:
            reply = sock.recv(65536)
            break
        except socket.timeout:
            continue
    assert reply.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 2.5
    sock.close()


def test_idle_keepalive_connection_closed_after_conn_timeout(server):
    with socket.create_connection(server.address, timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert 0.8 < time.monotonic() - started < 3


def test_blocking_handler_does_not_block_other_connections():
    stats = Stats()
    registry = build_registry(stats)
    release = gevent.event.Event()
    registry.register([MiCommand("test", "block", None, [[]], lambda p: release.wait(5) and "OK")])
    srv = start(registry, stats)
    try:
        blocked = gevent.spawn(http_exchange, srv.address,
                               post(b'{"jsonrpc":"2.0","method":"block","id":1}'))
        gevent.sleep(0.05)
        assert not blocked.ready()
        assert http_exchange(srv.address, post(VERSION)).endswith(b'"id":1}')
        release.set()
        assert blocked.get(timeout=3).endswith(b'{"jsonrpc":"2.0","result":"OK","id":1}')
    finally:
        srv.stop()


def test_health_and_metrics(server):
    http_exchange(server.address, post(VERSION))
    health = http_exchange(server.address, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200 OK") and health.endswith(b'{"status":"ok"}')
    metrics = http_exchange(server.address, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    status, headers, body = split_response(metrics)
    assert status == b"HTTP/1.1 200 OK"
    page = Scrape(dict(headers)[b"Content-Type"].decode(), body.decode())
    assert page.families["opensips_fs_mi_requests"].type == "counter"
    assert page.families["opensips_fs_mi_http_open_connections"].type == "gauge"
    assert page.value("opensips_fs_mi_requests_total") == 1


def test_extra_routes():
    srv = MiHttpServer(httpd_settings(), MiHttpSettings(root="mi"), build_registry(), Stats(),
                       extra_routes={"/health": lambda req: (503, "application/json", b'{"status":"degraded"}')})
    srv.start()
    try:
        reply = http_exchange(srv.address, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 503") and reply.endswith(b'{"status":"degraded"}')
    finally:
        srv.stop()


def test_custom_root_and_subpaths():
    srv = start(mi_root="json")
    try:
        for path in (b"/json", b"/json/", b"/json/anything", b"/json?x=1"):
            assert http_exchange(srv.address, post(VERSION, path=path)).endswith(b'"id":1}')
        assert http_exchange(srv.address, post(VERSION)).startswith(b"HTTP/1.1 404")
    finally:
        srv.stop()


def test_basic_auth():
    srv = start(auth_username="admin", auth_password="s3cret")
    try:
        denied = http_exchange(srv.address, post(VERSION))
        assert denied.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
        assert b'WWW-Authenticate: Basic realm="OpenSIPS MI"\r\n' in denied
        assert b"s3cret" not in denied
        wrong = b"Authorization: Basic " + base64.b64encode(b"admin:nope") + b"\r\n"
        assert http_exchange(srv.address, post(VERSION, extra=wrong)).startswith(b"HTTP/1.1 401")
        right = b"Authorization: Basic " + base64.b64encode(b"admin:s3cret") + b"\r\n"
        assert http_exchange(srv.address, post(VERSION, extra=right)).endswith(b'"id":1}')
        metrics = b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"
        assert http_exchange(srv.address, metrics).startswith(b"HTTP/1.1 401")
        health = b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"
        assert http_exchange(srv.address, health).startswith(b"HTTP/1.1 200")
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    result = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                             "-days", "1", "-keyout", str(key), "-out", str(cert)], capture_output=True)
    if result.returncode != 0:
        pytest.skip("openssl not available")
    return str(cert), str(key)


def test_tls(certificate):
    cert, key = certificate
    srv = start(tls_cert_file=cert, tls_key_file=key)
    try:
        context = ssl.create_default_context(cafile=cert)
        context.check_hostname = False
        with socket.create_connection(srv.address, timeout=5) as raw_sock:
            with context.wrap_socket(raw_sock) as sock:
                sock.sendall(post(VERSION))
                reply = b""
                while chunk := sock.recv(65536):
                    reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b'"id":1}')
        # plain HTTP on the TLS port is refused, the server goes on
        with socket.create_connection(srv.address, timeout=5) as plain:
            plain.sendall(post(VERSION))
            try:
                assert not plain.recv(100).startswith(b"HTTP/1.1 200")
            except ConnectionResetError:
                pass
    finally:
        srv.stop()


def test_tls_bad_certificate_is_a_startup_error(tmp_path):
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(StartupError, match="bogus.pem"):
        MiHttpServer(httpd_settings(tls_cert_file=str(bogus), tls_key_file=str(bogus)),
                     MiHttpSettings(root="mi"), build_registry(), Stats())


def test_address_in_use_is_a_startup_error(server):
    host, port = server.address
    other = MiHttpServer(httpd_settings(port=port), MiHttpSettings(root="mi"), build_registry(), Stats())
    with pytest.raises(StartupError, match=f"127.0.0.1:{port}"):
        other.start()


def test_mi_stats_counted(server):
    http_exchange(server.address, post(VERSION))
    http_exchange(server.address, post(b"{oops"))
    http_exchange(server.address, b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
    reply = http_exchange(server.address, post(
        b'{"jsonrpc":"2.0","method":"get_statistics","params":[["mi:"]],"id":1}'))
    values = json.loads(split_response(reply)[2])["result"]
    assert values["mi:requests"] == 3
    assert values["mi:parse_errors"] == 1
    assert values["mi:http_rejected"] == 1
    assert values["mi:http_requests"] == 4


def test_client_that_never_reads_is_cut_off():
    stats = Stats()
    registry = build_registry(stats)
    registry.register([MiCommand("test", "huge", None, [[]], lambda p: "x" * (8 << 20))])
    conn_timeout = 0.5
    srv = start(registry, stats, conn_timeout=conn_timeout)
    try:
        lazy = socket.create_connection(srv.address)
        lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lazy.sendall(post(b'{"jsonrpc":"2.0","method":"huge","id":1}', close=False))
        gevent.sleep(0.1)
        assert http_exchange(srv.address, post(VERSION)).endswith(b'"id":1}')
        (open_now,) = [s for s in srv.stats if s.name == "http_open_connections"]
        # the stalled write is given up after conn_timeout
        wait_until(lambda: open_now.value == 0, timeout=4 * conn_timeout, what="the stalled client cut off")
        assert srv.stats.counter("mi", "http_connections").value == 2
        lazy.close()
    finally:
        srv.stop()


# ------------------------------------------------------------------ limits


def test_connection_cap_closes_the_oldest_idle_connection():
    """At max_connections, a new client is served: the connection idle the
    longest is closed to make room (and counted)."""
    srv = start(max_connections=8)
    idle = []
    try:
        for i in range(8):
            idle.append(socket.create_connection(srv.address, timeout=3))
            gevent.sleep(0.01)
        gevent.sleep(0.1)
        assert http_exchange(srv.address, post(VERSION), timeout=3).endswith(b'"id":1}')
        assert idle[0].recv(100) == b""               # the oldest made room
        idle[1].settimeout(0.2)
        with pytest.raises(socket.timeout):           # the others are still open
            idle[1].recv(100)
        idle[1].sendall(post(VERSION, close=False))   # and still served
        idle[1].settimeout(3)
        assert read_http_response(idle[1], bytearray()).endswith(b'"id":1}')
        assert srv.stats.counter("mi", "http_idle_closed_for_room").value == 1
        (open_now,) = [s for s in srv.stats if s.name == "http_open_connections"]
        assert open_now.value <= 8
    finally:
        for sock in idle:
            sock.close()
        srv.stop()


def test_connection_cap_refuses_when_no_connection_is_idle():
    """Every connection in the middle of a request: a new one is refused
    (closed at once, counted) rather than going over the cap."""
    srv = start(max_connections=4)
    busy = []
    try:
        for _ in range(4):
            sock = socket.create_connection(srv.address, timeout=3)
            sock.sendall(b"POST /mi HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
            busy.append(sock)
        gevent.sleep(0.1)
        with socket.create_connection(srv.address, timeout=3) as extra:
            try:
                assert extra.recv(100) == b""
            except ConnectionResetError:
                pass
        assert srv.stats.counter("mi", "http_connections_refused").value == 1
    finally:
        for sock in busy:
            sock.close()
        srv.stop()


def _start_service(tmp_path, lines, fd_limit):
    """The real service (python -m opensips_fs) under an fd limit; returns
    (process, MI HTTP port, log path)."""
    import resource
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = tmp_path / "limits.cfg"
    cfg.write_text("\n".join(["log_level=2", "log_stderror=yes", 'loadmodule "httpd.so"',
                              'modparam("httpd", "ip", "127.0.0.1")', f'modparam("httpd", "port", {port})',
                              'loadmodule "mi_http.so"', *lines]) + "\n")
    log_path = tmp_path / "service.log"

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    process = subprocess.Popen([sys.executable, "-m", "opensips_fs", "-f", str(cfg)], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"), preexec_fn=limit)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port, log_path
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError("service did not start: " + log_path.read_text())
            time.sleep(0.05)


@pytest.mark.parametrize("cap", [None, 1000])
def test_more_clients_than_descriptors_keeps_mi_reachable(tmp_path, cap):
    """fd limit 128, 200 idle connections: with the automatic cap (half the
    fd limit) or a cap above the limit (EMFILE: the oldest idle connection
    is closed, accepting backs off), a new client is answered, and the log
    has no traceback and at most a few lines about it."""
    lines = [] if cap is None else [f'modparam("httpd", "max_connections", {cap})']
    process, port, log_path = _start_service(tmp_path, lines, fd_limit=128)
    idle = []
    try:
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(2.5)
        for _ in range(3):
            reply = http_exchange(("127.0.0.1", port), post(VERSION), timeout=5)
            assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b'"id":1}')
        assert process.poll() is None
    finally:
        for sock in idle:
            sock.close()
        process.terminate()
        process.wait(timeout=10)
    text = log_path.read_text()
    assert "Traceback" not in text
    assert text.count("Too many open files") <= 3

"""MI over a real FIFO and real UDP / unix datagram sockets: the framing of
golden/opensips/mi_other_transports.json, replayed, plus the [EMU] cases."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import gevent
import pytest

from opensips_fs.config import MiDatagramSettings, MiFifoSettings
from opensips_fs.mi import StartupError
from opensips_fs.mi.datagram import MiDatagramServer
from opensips_fs.mi.fifo import MiFifoServer
from opensips_fs.stats import Stats
from opensips_fs.mi.commands import MiCommand
from support.mi import build_registry, latin1, load_golden, mkfifo_reply, read_reply, real_select, write_fifo
from support.waits import wait_until

pytestmark = pytest.mark.timeout(20)
PARSE_ERROR = b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}'
# fs_list replies come from the scripting room's handler: those exchanges are
# replayed through the real App in test_mi_app::test_other_transports.
FS_HANDLER_LABELS = {"fifo fs_list", "fifo fs_list opensips-cli style", "fifo fs_list with trailing newline",
                     "datagram fs_list"}


def _mi_exchanges(transport: str) -> list:
    """The mi_other_transports exchanges over `transport` that the MI layer answers."""
    return [pytest.param(e, id=e["label"]) for e in load_golden("mi_other_transports.json")["exchanges"]
            if e["transport"] == transport and e["label"] not in FS_HANDLER_LABELS]


class FifoWithStats(MiFifoServer):
    """The FIFO server, with the statistics it counts in (for the tests)."""

    stats: Stats


class DatagramWithStats(MiDatagramServer):
    """The datagram server, with the statistics it counts in (for the tests)."""

    stats: Stats


# -- FIFO -------------------------------------------------------------------------

@pytest.fixture
def fifo(tmp_path):
    stats = Stats()
    registry = build_registry(stats)
    reply_dir = tmp_path / "replies"
    reply_dir.mkdir()
    settings = MiFifoSettings(fifo_name=str(tmp_path / "opensips_fifo"), fifo_mode=0o600,
                              reply_dir=str(reply_dir) + "/")
    server = FifoWithStats(settings, registry, stats)
    server.stats = stats
    server.start()
    yield server
    server.stop()


def fifo_request(server, name: str, body: bytes) -> bytes:
    reply_path = mkfifo_reply(Path(server.reply_dir), name)
    try:
        write_fifo(server, b":" + name.encode() + b":" + body)
        return read_reply(reply_path)
    finally:
        os.unlink(reply_path)


def test_fifo_created_with_mode(fifo):
    mode = os.stat(fifo.path).st_mode
    assert stat.S_ISFIFO(mode) and stat.S_IMODE(mode) == 0o600


@pytest.mark.parametrize("exchange", _mi_exchanges("fifo"))
def test_fifo_golden(fifo, exchange):
    raw = latin1(exchange["request_raw"])
    name = raw.split(b":")[1].decode()
    body = raw.split(b":", 2)[2]
    reply = fifo_request(fifo, name, body)
    if exchange["label"] == "fifo invalid JSON":
        assert reply == PARSE_ERROR   # [EMU]: OpenSIPS never opens the reply FIFO
    else:
        assert reply == latin1(exchange["response_raw"])


def test_fifo_opensips_cli_liveness_open_close(fifo):
    for _ in range(3):
        os.close(os.open(fifo.path, os.O_WRONLY))
    reply = fifo_request(fifo, "r1", b'{"jsonrpc":"2.0","method":"version","id":"7"}')
    assert reply.startswith(b'{"jsonrpc":"2.0","result":{"Server":"OpenSIPS (4.1.0-dev (')
    assert reply.endswith(b'"id":"7"}')
    assert b"\n" not in reply


def test_fifo_several_requests_in_one_write_each_on_its_reply(fifo, tmp_path):
    reply_dir = Path(fifo.reply_dir)
    names = ["a1", "a2", "a3"]
    paths = [mkfifo_reply(reply_dir, n) for n in names]
    data = b"".join(b':%s:{"jsonrpc":"2.0","method":"help","params":["which"],"id":%d}\n' % (n.encode(), i)
                    for i, n in enumerate(names))
    write_fifo(fifo, data)
    for i, path in enumerate(paths):
        assert read_reply(path) == (b'{"jsonrpc":"2.0","result":{"Help":"lists all available MI commands",'
                                    b'"Exported by":"core"},"id":%d}' % i)


def test_fifo_request_split_over_writes(fifo):
    reply_path = mkfifo_reply(Path(fifo.reply_dir), "split")
    fd = os.open(fifo.path, os.O_WRONLY)
    try:
        for part in (b":spl", b"it:{\"jsonrpc\":", b"\"2.0\",\"method\":\"which\",\"params\"",
                     b":[\"fs_list\"],\"id\":1}"):
            os.write(fd, part)
            gevent.sleep(0.02)
    finally:
        os.close(fd)
    assert read_reply(reply_path) == b'{"jsonrpc":"2.0","result":[[]],"id":1}'


def test_fifo_refuses_reply_names_with_path_chars(fifo, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    for name in ("../victim", "a.b", "a\\b"):
        write_fifo(fifo, b":" + name.encode() + b':{"jsonrpc":"2.0","method":"version","id":1}')
    wait_until(lambda: fifo.stats.counter("mi", "fifo_rejected").value == 3, what="three requests refused")
    assert victim.read_bytes() == b"untouched"
    # the server still answers afterwards
    assert fifo_request(fifo, "after", b'{"jsonrpc":"2.0","method":"which","params":["ps"],"id":2}') == \
        b'{"jsonrpc":"2.0","result":[[]],"id":2}'


def test_fifo_never_writes_a_regular_file(fifo):
    regular = Path(fifo.reply_dir) / "plainfile"
    regular.write_bytes(b"keep")
    write_fifo(fifo, b':plainfile:{"jsonrpc":"2.0","method":"version","id":1}')
    wait_until(lambda: fifo.stats.counter("mi", "fifo_reply_failures").value == 1, what="the reply refused")
    assert regular.read_bytes() == b"keep"


def test_fifo_reply_never_follows_a_symlink(fifo, tmp_path):
    """A link planted in the reply folder cannot redirect a reply to a FIFO
    elsewhere: the reply is not written, the failure is counted."""
    elsewhere = tmp_path / "elsewhere"
    os.mkfifo(elsewhere, 0o600)
    (Path(fifo.reply_dir) / "planted").symlink_to(elsewhere)
    fd = os.open(elsewhere, os.O_RDONLY | os.O_NONBLOCK)   # a reader is there, waiting
    try:
        write_fifo(fifo, b':planted:{"jsonrpc":"2.0","method":"version","id":1}')
        wait_until(lambda: fifo.stats.counter("mi", "fifo_reply_failures").value == 1, what="the reply refused")
        assert real_select([fd], [], [], 0)[0] == []    # no writer ever came
    finally:
        os.close(fd)
    # a real reply FIFO is still answered
    assert fifo_request(fifo, "real", b'{"jsonrpc":"2.0","method":"which","params":["ps"],"id":2}') == \
        b'{"jsonrpc":"2.0","result":[[]],"id":2}'


def test_fifo_notification_opens_and_closes(fifo):
    assert fifo_request(fifo, "n1", b'{"jsonrpc":"2.0","method":"version"}') == b""


def test_fifo_empty_reply_name_runs_without_reply(fifo):
    level = fifo.registry.log_level
    write_fifo(fifo, b'::{"jsonrpc":"2.0","method":"log_level","params":[4],"id":1}')
    for _ in range(100):
        if level.level == 4:
            break
        gevent.sleep(0.01)
    assert level.level == 4


def test_fifo_incomplete_request_times_out_as_parse_error(fifo):
    fifo.idle_flush = 0.2
    reply = fifo_request(fifo, "slow", b'{"jsonrpc":"2.0","method":')
    assert reply == PARSE_ERROR


def test_fifo_startup_errors(tmp_path):
    stats = Stats()
    settings = MiFifoSettings(fifo_name=str(tmp_path / "f"), fifo_mode=0o600, reply_dir=str(tmp_path / "missing"))
    with pytest.raises(StartupError, match="missing"):
        MiFifoServer(settings, build_registry(stats), stats).start()


def test_fifo_replaces_stale_file(tmp_path):
    stats = Stats()
    path = tmp_path / "fifo"
    path.write_text("stale")
    settings = MiFifoSettings(fifo_name=str(path), fifo_mode=0o640, reply_dir=str(tmp_path))
    server = MiFifoServer(settings, build_registry(stats), stats).start()
    try:
        assert stat.S_ISFIFO(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    finally:
        server.stop()
    assert not path.exists()


# -- datagram ------------------------------------------------------------------

@pytest.fixture
def udp():
    stats = Stats()
    server = DatagramWithStats(MiDatagramSettings(socket_name="udp:127.0.0.1:0"), build_registry(stats), stats)
    server.stats = stats
    server.start()
    yield server
    server.stop()


def udp_request(server, data: bytes, timeout=1.0):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, server.address)
        try:
            return [sock.recv(65535)]
        except socket.timeout:
            return []


@pytest.mark.parametrize("exchange", _mi_exchanges("datagram"))
def test_datagram_golden(udp, exchange):
    timeout = 0.3 if exchange["response_datagrams"] == [] else 2.0
    assert udp_request(udp, latin1(exchange["request_raw"]), timeout) == \
        [latin1(d) for d in exchange["response_datagrams"]]


def test_datagram_bad_id_and_batch(udp):
    bad = b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}'
    assert udp_request(udp, b'{"jsonrpc":"2.0","method":"version","id":[1]}') == [bad]
    assert udp_request(udp, b'[{"jsonrpc":"2.0","method":"version","id":1}]') == [bad]


def test_datagram_oversize_reply_is_a_clear_error(udp):
    """A reply over one datagram: a JSON-RPC error with the request's id
    saying so (OpenSIPS sends a text clients cannot decode), counted."""
    udp.registry.register([MiCommand("test", "big", None, [[]], lambda p: "x" * 70000)])
    for request_id in (1, 'a,"id":2'):
        echoed = json.dumps(request_id, separators=(",", ":")).encode()
        body = b'{"jsonrpc":"2.0","method":"big","id":%s}' % echoed
        too_big = len(b'{"jsonrpc":"2.0","result":"' + b"x" * 70000 + b'","id":' + echoed + b"}")
        (reply,) = udp_request(udp, body)
        assert reply == (b'{"jsonrpc":"2.0","error":{"code":-32000,"message":"Server error","data":'
                         b'"reply too large for a datagram (%d bytes, at most 65457): use MI HTTP or FIFO"},'
                         b'"id":%s}' % (too_big, echoed))
        assert json.loads(reply)["id"] == request_id
    assert udp.stats.counter("mi", "datagram_oversize_replies").value == 2
    # a reply that fits is sent as it is
    assert udp_request(udp, b'{"jsonrpc":"2.0","method":"which","params":["ps"],"id":3}') == \
        [b'{"jsonrpc":"2.0","result":[[]],"id":3}']


def test_unix_datagram(tmp_path):
    stats = Stats()
    path = tmp_path / "mi.sock"
    server = MiDatagramServer(MiDatagramSettings(socket_name=str(path)), build_registry(stats), stats).start()
    client_path = tmp_path / "client.sock"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(client_path))
            sock.settimeout(2)
            sock.sendto(b'{"jsonrpc":"2.0","method":"which","params":{"command":"fs_subscribe"},"id":"u"}', str(path))
            assert sock.recv(65535) == b'{"jsonrpc":"2.0","result":[["freeswitch_url","events"]],"id":"u"}'
    finally:
        server.stop()
    assert not path.exists()


def test_datagram_bind_error_names_address():
    stats = Stats()
    first = MiDatagramServer(MiDatagramSettings(socket_name="udp:127.0.0.1:0"), build_registry(stats), stats).start()
    try:
        port = first.address[1]
        second = MiDatagramServer(MiDatagramSettings(socket_name=f"udp:127.0.0.1:{port}"), build_registry(), Stats())
        with pytest.raises(StartupError, match=f"udp:127.0.0.1:{port}"):
            second.start()
    finally:
        first.stop()
    with pytest.raises(StartupError):
        MiDatagramServer(MiDatagramSettings(socket_name="udp:nohostport"), build_registry(), Stats())


def test_datagram_empty_bracketed_host_is_refused():
    """Commit bcba2ad: 'udp:[]:80' used to bind the empty host (every
    interface); like the config checker, the server now refuses it."""
    with pytest.raises(StartupError, match=r"udp:\[\]:80"):
        MiDatagramServer(MiDatagramSettings(socket_name="udp:[]:80"), build_registry(), Stats())

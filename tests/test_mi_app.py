"""The MI transports inside the real service (`App`, real freeswitch_scripting
commands, no FreeSWITCH socket configured): the fs_list exchanges of the
golden transcripts that the MI-only tests leave to the scripting room —
HTTP framing (mi_jsonrpc_errors, mi_http_keepalive), FIFO and datagram
(mi_other_transports) — and `fs_list` through opensips-cli and
opensips.mi.OpenSIPSMI over all three transports."""

from __future__ import annotations

import json
import os
import socket

import pytest

from opensips_fs import config as configuration
from opensips_fs.app import App
from support.mi import (
    emu_version, fs_list_result, http_exchange, latin1, load_golden, mask_date, mkfifo_reply,
    read_http_response, read_reply, write_fifo,
)
from support.mi_clients import MiServers, opensips_cli, opensips_mi

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    base = tmp_path_factory.mktemp("app")
    replies = base / "replies"
    replies.mkdir()
    text = f"""
log_level=1
loadmodule "freeswitch.so"
loadmodule "freeswitch_scripting.so"
loadmodule "httpd.so"
modparam("httpd", "ip", "127.0.0.1")
modparam("httpd", "port", 0)
loadmodule "mi_http.so"
loadmodule "mi_fifo.so"
modparam("mi_fifo", "fifo_name", "{base / 'fifo'}")
modparam("mi_fifo", "fifo_mode", 0600)
modparam("mi_fifo", "reply_dir", "{replies}/")
loadmodule "mi_datagram.so"
modparam("mi_datagram", "socket_name", "udp:127.0.0.1:0")
"""
    try:
        cfg = configuration.loads(text, str(base / "mi-app.cfg"))
    except configuration.ConfigError as err:
        pytest.skip(f"config refuses ephemeral ports: {err}")
    service = App(cfg).start()
    servers = {what: server for what, _, server in service.transports}
    yield MiServers(http=servers["MI HTTP"], fifo=servers["MI FIFO"], datagram=servers["MI datagram"],
                    reply_dir=replies, home=base)
    service.stop()


# The other exchanges of this file are replayed by test_mi_golden (MI only).
@pytest.mark.parametrize("exchange", [pytest.param(e, id=e["label"])
                                      for e in load_golden("mi_jsonrpc_errors.json")["exchanges"]
                                      if fs_list_result(e)])
def test_jsonrpc_errors_fs_list_replies(app, exchange):
    raw = http_exchange(app.http.address, latin1(exchange["request_raw"]))
    assert mask_date(raw) == mask_date(latin1(exchange["response_raw"]))


def test_keepalive_pair(app):
    (pair,) = load_golden("mi_http_keepalive.json")["exchanges"]
    with socket.create_connection(app.http.address, timeout=5) as sock:
        buffer = bytearray()
        for exchange in pair["exchanges"]:
            sock.sendall(latin1(exchange["request_raw"]))
            assert mask_date(read_http_response(sock, buffer)) == mask_date(
                emu_version(latin1(exchange["response_raw"])))


@pytest.mark.parametrize("exchange", [pytest.param(e, id=e["label"])
                                      for e in load_golden("mi_other_transports.json")["exchanges"]])
def test_other_transports(app, exchange):
    raw = latin1(exchange["request_raw"])
    if exchange["transport"] == "fifo":
        name = raw.split(b":")[1].decode()
        path = mkfifo_reply(app.reply_dir, name)
        try:
            write_fifo(app.fifo, raw)
            reply = read_reply(path)
        finally:
            os.unlink(path)
        if exchange["label"] == "fifo invalid JSON":   # [EMU] OpenSIPS never answers
            assert reply == b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}'
        else:
            assert reply == latin1(exchange["response_raw"])
    else:
        expected = [latin1(d) for d in exchange["response_datagrams"]]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.3 if not expected else 2)
            sock.sendto(raw, app.datagram.address)
            try:
                got = [sock.recv(65535)]
            except socket.timeout:
                got = []
        assert got == expected


@pytest.mark.parametrize("transport", ["http", "fifo", "datagram"])
def test_cli_fs_list(app, transport):
    result = opensips_cli(app, transport, "fs_list")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"Sockets": []}
    # an fs_* error and array params, as users type them
    bad = opensips_cli(app, transport, "fs_subscribe", "127.0.0.1:8029")
    assert bad.returncode != 0
    assert "-32602: Invalid params (Too few or too many parameters)" in bad.stderr


@pytest.mark.parametrize("transport", ["http", "fifo", "datagram"])
def test_opensips_mi_fs_list(app, transport):
    replies = opensips_mi(app, transport, [["fs_list", []], ["fs_list", {}]])
    assert replies == [{"result": {"Sockets": []}}, {"result": {"Sockets": []}}]


def test_datagram_fs_list_too_big_is_a_clear_error(app):
    """fs_list over 65 KB through opensips-cli's datagram transport: a clear
    error instead of "could not decode json ... Is OpenSIPS running?"."""
    names = [f"CUSTOM_EVENT_NAME_{i:05d}" for i in range(3000)]

    def mi_http(method, params):
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}).encode()
        request = (b"POST /mi HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                   % len(body)) + body
        return http_exchange(app.http.address, request)

    assert mi_http("fs_subscribe", ["fs://:ClueCon@127.0.0.1:9", names]).endswith(b'"result":"OK","id":1}')
    try:
        result = opensips_cli(app, "datagram", "fs_list")
        assert result.returncode != 0
        assert "-32000: Server error (reply too large for a datagram" in result.stderr
        assert "could not decode" not in result.stderr
    finally:
        assert mi_http("fs_unsubscribe", ["fs://127.0.0.1:9", names]).endswith(b'"result":"OK","id":1}')
    assert json.loads(opensips_cli(app, "datagram", "fs_list").stdout) == {"Sockets": []}

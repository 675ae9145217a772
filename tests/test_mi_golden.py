"""Replay the recorded OpenSIPS MI transcripts (golden/opensips/mi_*) against
the MI server over real HTTP and compare the reply bytes (Date masked).

Exchanges whose reply comes from a freeswitch_scripting handler are replayed
through the real App (fs_list: test_mi_app) or by the scripting room's tests
(handler-side fs_subscribe errors); here every reply produced by the MI layer itself
is checked: JSON-RPC framing errors, name resolution, recipe matching, core
commands, HTTP framing. Where OpenSIPS leaves the client hanging ([OS]), the
expected bytes are our documented [EMU] replies (docs/protocols/mi.md §6.1).
"""

from __future__ import annotations

import json
import os
import socket

import pytest

from opensips_fs.config import MiHttpSettings
from opensips_fs.mi.http import MiHttpServer
from opensips_fs.stats import Stats
from support.mi import (
    build_registry, emu_version, fs_list_result, http_exchange, httpd_settings, latin1,
    load_golden, mask_date,
    read_http_response, split_response,
)

pytestmark = pytest.mark.timeout(30)

FS_NAMES = {"fs_list", "fs_subscribe", "fs_unsubscribe", "fs_reload", "freeswitch_esl", "fs_status"}
PRE_HANDLER_DATA = {"Too few or too many parameters", "Named parameters do not match"}

EMU_202 = (b"HTTP/1.1 202 Accepted\r\nDate: <masked>\r\nConnection: close\r\n"
           b"Content-Type: application/json\r\nContent-Length: 0\r\n\r\n")
EMU_400 = (b"HTTP/1.1 400 Bad Request\r\nDate: <masked>\r\nConnection: close\r\n"
           b"Content-Type: application/json\r\nContent-Length: 0\r\n\r\n")
EMU_405 = (b"HTTP/1.1 405 Method Not Allowed\r\nDate: <masked>\r\nConnection: close\r\nAllow: POST\r\n"
           b"Content-Type: application/json\r\nContent-Length: 0\r\n\r\n")
EMU_404 = b"HTTP/1.1 404 Not Found\r\nDate: <masked>\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
BAD_ID_BODY = b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}'


def ok_200(body: bytes, close: bool = True) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return (b"HTTP/1.1 200 OK\r\nDate: <masked>\r\n" + connection + b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


@pytest.fixture
def server():
    stats = Stats()
    registry = build_registry(stats)
    srv = MiHttpServer(httpd_settings(), MiHttpSettings(root="mi"), registry, stats)
    srv.start()
    yield srv
    srv.stop()


def _method_of(request_body: str):
    try:
        return json.JSONDecoder().raw_decode(request_body.strip())[0].get("method")
    except (ValueError, AttributeError):
        return None


def _fs_handler_reply(exchange) -> bool:
    """The recorded reply comes from a freeswitch_scripting handler."""
    if _method_of(exchange.get("request_body") or "") not in FS_NAMES:
        return False
    reply = exchange.get("response_json")
    if not isinstance(reply, dict):
        return True
    error = reply.get("error")
    return not (error and error.get("data") in PRE_HANDLER_DATA)


def _http_exchanges(name, covered_elsewhere=lambda exchange: False):
    return [pytest.param(e, id=e["label"]) for e in load_golden(name)["exchanges"]
            if e["transport"] == "http" and not covered_elsewhere(e)]


# -- mi_jsonrpc_errors ---------------------------------------------------------

EMU_BY_LABEL = {
    "unknown method, notification": EMU_202,
    "id is an object": ok_200(BAD_ID_BODY),
    "id is an array": ok_200(BAD_ID_BODY),
    "id is a bool": ok_200(BAD_ID_BODY),
    "empty POST body": EMU_400,
    "GET /mi": EMU_405,
    "POST to /other path": EMU_404,
    "POST to / path": EMU_404,
}


def _jsonrpc_error_covered_elsewhere(exchange) -> bool:
    """fs_list results are replayed through the real App (test_mi_app::
    test_jsonrpc_errors_fs_list_replies); on "Content-Type text/plain" OpenSIPS
    drops the connection, our [EMU] answer is test_content_type_not_checked."""
    return fs_list_result(exchange) or exchange["label"] == "Content-Type text/plain"


@pytest.mark.parametrize("exchange", _http_exchanges("mi_jsonrpc_errors.json", _jsonrpc_error_covered_elsewhere))
def test_jsonrpc_errors(server, exchange):
    raw = http_exchange(server.address, latin1(exchange["request_raw"]))
    expected = EMU_BY_LABEL.get(exchange["label"]) or mask_date(latin1(exchange["response_raw"]))
    assert mask_date(raw) == expected


def test_content_type_not_checked(server):
    body = b'{"jsonrpc":"2.0","method":"version","id":16}'
    for content_type in (b"text/plain", b"application/x-www-form-urlencoded", b"text/xml", None):
        header = b"Content-Type: " + content_type + b"\r\n" if content_type else b""
        raw = http_exchange(server.address, b"POST /mi HTTP/1.1\r\nHost: x\r\n" + header +
                            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert raw.endswith(b',"id":16}')


# -- mi_http_error_reply_hang ------------------------------------------------------

def test_error_reply_hang_is_answered(server):
    (exchange,) = load_golden("mi_http_error_reply_hang.json")["exchanges"]
    raw = http_exchange(server.address, latin1(exchange["request_raw"]), timeout=3)
    assert mask_date(raw) == ok_200(BAD_ID_BODY)


# -- mi_http_keepalive -------------------------------------------------------------------

def test_keepalive_pair(server):
    (pair,) = load_golden("mi_http_keepalive.json")["exchanges"]
    first, second = pair["exchanges"]
    with socket.create_connection(server.address, timeout=5) as sock:
        buffer = bytearray()
        # The first exchange is fs_list (scripting room): send version twice
        # in the same framing to check keep-alive, then the recorded second one.
        sock.sendall(latin1(second["request_raw"]))
        expected = mask_date(emu_version(latin1(second["response_raw"])))
        assert mask_date(read_http_response(sock, buffer)) == expected
        sock.sendall(latin1(second["request_raw"]))
        assert mask_date(read_http_response(sock, buffer)) == expected
    assert b"fs_list" in latin1(first["request_raw"])


# -- mi_core_commands -----------------------------------------------------------

EXACT_WHICH = [
    "get_statistics", "list_statistics", "reset_statistics", "reset_all_statistics",
    "uptime", "version", "pwd", "arg", "which", "ps", "kill", "log_level", "help",
    "event_subscribe", "events_list", "subscribers_list", "raise_event", "fs_subscribe",
    "fs_unsubscribe", "fs_list", "fs_reload", "freeswitch_esl", "fs_status",
    "statistics:get", "statistics:list", "statistics:reset", "statistics:reset_all",
    "core:uptime", "core:version", "core:pwd", "core:arg", "core:which", "core:ps", "core:kill",
    "core:log_level", "core:help", "evi:subscribe", "evi:list", "evi:subscribers", "evi:raise",
    "freeswitch_scripting:subscribe", "freeswitch_scripting:unsubscribe",
    "freeswitch_scripting:list", "freeswitch_scripting:reload", "freeswitch_scripting:esl",
    "freeswitch_scripting:status",
]


@pytest.mark.parametrize("exchange", _http_exchanges("mi_core_commands.json"))
def test_core_commands(server, exchange):
    raw = http_exchange(server.address, latin1(exchange["request_raw"]))
    status, headers, body = split_response(raw)
    golden_status, golden_headers, _ = split_response(latin1(exchange["response_raw"]))
    assert status == golden_status
    assert [h[0] for h in headers] == [h[0] for h in golden_headers]
    reply = json.loads(body)
    golden = exchange["response_json"]
    assert list(reply) == list(golden)
    assert reply["id"] == golden["id"]
    method = _method_of(exchange["request_body"])
    if method == "which":
        assert reply["result"] == EXACT_WHICH
    elif method == "uptime":
        assert list(reply["result"]) == ["Now", "Up since", "Up time"]
        assert reply["result"]["Up time"].endswith(" [sec]")
    elif method in ("ps", "log_level"):
        rows = reply["result"]["Processes"]
        assert [list(r) for r in rows] == [list(golden["result"]["Processes"][0])] * len(rows)
        assert all(r["PID"] == os.getpid() for r in rows)
    elif method == "get_statistics":
        assert reply["result"] and all(isinstance(v, int) for v in reply["result"].values())
    elif method == "list_statistics":
        assert set(reply["result"].values()) <= {"incremental", "non-incremental"}
    elif method == "arg":
        assert isinstance(reply["result"], list) and reply["result"]
    elif method == "pwd":
        assert reply["result"] == {"WD": os.getcwd()}
    else:  # version ([EMU] plus our version), help, kill with bad params: byte for byte
        assert mask_date(raw) == mask_date(emu_version(latin1(exchange["response_raw"])))


# -- mi_fs_subscribe_errors: errors decided before any handler runs ---------------

# Replies made by the fs_subscribe/fs_list handlers are replayed by the
# scripting room (test_scripting_golden::test_mi_phase replays the whole file).
@pytest.mark.parametrize("exchange", _http_exchanges("mi_fs_subscribe_errors.json", _fs_handler_reply))
def test_fs_subscribe_recipe_errors(server, exchange):
    raw = http_exchange(server.address, latin1(exchange["request_raw"]))
    assert mask_date(raw) == mask_date(latin1(exchange["response_raw"]))


# mi_other_transports is replayed over the real FIFO and datagram sockets in
# test_mi_fifo_datagram (MI replies) and test_mi_app (fs_list replies).

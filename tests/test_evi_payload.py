"""EVI's sans-IO parts, without sockets: notification bytes, MI raise_event
params, socket-string parsing, XML-RPC request bytes."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opensips_fs.evi import payload as P
from opensips_fs.evi.address import Target, parse_socket
from opensips_fs.evi.xmlrpc import request, request_params
from opensips_fs.mi.commands import MISSING, MiError


def test_notification_member_order_and_no_params():
    assert P.notification("E_X", None).payload == b'{"jsonrpc":"2.0","method":"E_X"}'
    note = P.notification("E_X", [("a", "b"), ("n", 5), ("", "u")])
    assert note.payload == b'{"jsonrpc":"2.0","method":"E_X","params":{"a":"b","n":5,"":"u"}}'
    assert note.for_method(P.method_head("m")) == \
        b'{"jsonrpc":"2.0","method":"m","params":{"a":"b","n":5,"":"u"}}'


def test_freeswitch_payload_matches_the_generic_builder():
    body = '{"Event-Name":"DTMF","Quote":"a\\"b\\\\c/d","Ctl":"\\u0001","U":"café ☃"}'
    fast = P.FREESWITCH_HEAD + P.freeswitch_tail("DTMF", "127.0.0.1", body)
    generic = P.notification("E_FREESWITCH", [("name", "DTMF"), ("sender", "127.0.0.1"),
                                              ("body", body)]).payload
    assert fast == generic
    assert fast == ('{"jsonrpc":"2.0","method":"E_FREESWITCH","params":{"name":"DTMF",'
                    '"sender":"127.0.0.1","body":"{\\"Event-Name\\":\\"DTMF\\",\\"Quote\\":'
                    '\\"a\\\\\\"b\\\\\\\\c/d\\",\\"Ctl\\":\\"\\\\u0001\\",\\"U\\":\\"café ☃\\"}"}}'
                    ).encode()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.text(max_size=20))
def test_any_body_bytes_round_trip(body, name):
    text = body.decode("utf-8", "surrogateescape")
    payload = P.FREESWITCH_HEAD + P.freeswitch_tail(name, "fs1", text)
    decoded = json.loads(payload.decode("utf-8", "surrogateescape"))
    assert decoded["params"]["body"].encode("utf-8", "surrogateescape") == body
    assert decoded["params"]["name"] == name
    assert b"\n" not in payload and list(decoded) == ["jsonrpc", "method", "params"]


@pytest.mark.parametrize("raw,params", [
    (MISSING, None),
    ([], None),
    (["a", 5, -2.7], [("", "a"), ("", "5"), ("", "-2")]),
    ('{"a":"b","n":1.5,"t":true,"z":null,"o":{"x":[1,{"y":2}]},"a":"again"}',
     [("a", "b"), ("n", 1), ("t", "true"), ("z", "null"), ("o", '{"x":[1,{"y":2}]}'),
      ("a", "again")]),
    ("{}", None),
])
def test_mi_params(raw, params):
    assert P.parse_mi_params(raw) == params


@pytest.mark.parametrize("raw,message", [
    ("nope", "Bad Params"), ("[1,2]", "Bad Params"), ('"s"', "Bad Params"), ("5", "Bad Params"),
    (5, "Bad Params"), (1.5, "Bad Params"), ([["a"]], "Bad Params"), ([True], "Bad Params"),
    ({"a": "b"}, "No Params"), (False, "No Params"), (None, "No Params"),
])
def test_mi_params_errors(raw, message):
    with pytest.raises(MiError) as err:
        P.parse_mi_params(raw)
    assert (err.value.code, err.value.message, err.value.data) == (400, message, None)


def parsed(text: str) -> Target:
    target = parse_socket(text)
    assert target is not None, text
    return target


@pytest.mark.parametrize("text,transport,printed,host,port,method,path", [
    ("udp:127.0.0.1:9500", "udp", "udp:127.0.0.1:9500", "127.0.0.1", 9500, None, ""),
    ("udp:localhost:09500", "udp", "udp:localhost:9500", "localhost", 9500, None, ""),
    ("unix:/run/ev.sock", "unix", "unix:/run/ev.sock", "/run/ev.sock", 0, None, ""),
    ("tcp:h:1/notify", "tcp", "tcp:h:1/notify", "h", 1, "notify", ""),
    ("jsonrpc:h:65535", "jsonrpc", "jsonrpc:h:65535", "h", 65535, None, ""),
    ("xmlrpc:h:8080:block_ip", "xmlrpc", "xmlrpc:h:8080:block_ip", "h", 8080, "block_ip", "/RPC2"),
    ("xmlrpc:h:8080/x/y:m", "xmlrpc", "xmlrpc:h:8080/x/y:m", "h", 8080, "m", "/x/y"),
    ("http://h/hook", "http", "http://h/hook", "h", 80, None, "/hook"),
    ("https://h:8443", "https", "https://h:8443", "h", 8443, None, "/"),
    ("http://u:p%40ss@h:81/a?b=1", "http", "http://u:***@h:81/a?b=1", "h", 81, None, "/a?b=1"),
])
def test_socket_strings(text, transport, printed, host, port, method, path):
    t = parsed(text)
    assert (t.transport, t.printed, t.host, t.port, t.method, t.path) == (
        transport, printed, host, port, method, path)


def test_match_rules():
    assert parsed("udp:h:1").match == parsed("udp:h:01").match
    assert parsed("udp:h:1").match != parsed("udp:H:1").match
    assert parsed("tcp:h:1").match != parsed("tcp:h:1/m").match
    assert parsed("tcp:h:1").match != parsed("jsonrpc:h:1").match


def test_xmlrpc_request_layout():
    params = request_params([("name", "DTMF"), ("n", 5), ("", "anon")])
    assert params == ("<param>\n<name>name</name>\n<value><string>DTMF</string></value>\n</param>\n"
                      "<param>\n<name>n</name>\n<value><int>5</int></value>\n</param>\n"
                      "<param>\n<value><string>anon</string></value>\n</param>\n")
    struct = request_params([("ip", "1.2.3.4")], struct=True)
    assert struct == ("<param>\n<value><struct><member>\n<name>ip</name>\n"
                      "<value><string>1.2.3.4</string></value>\n</member></struct></value>\n"
                      "</param>\n")
    data = request("127.0.0.1", 8081, "/RPC2", "e_dummy_h", "E_MY_EVENT",
                   request_params([("ip", "192.168.2.11")]))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"POST /RPC2 HTTP/1.1", b"Host: 127.0.0.1:8081", b"Connection: close",
        b"User-Agent: OpenSIPS XMLRPC Notifier", b"Content-type: text/xml",
        b"Content-length: %d" % len(body)]
    assert body == (b'<?xml version="1.0"?>\n<methodCall>\n<methodName>e_dummy_h</methodName>\n'
                    b"<params>\n<param>\n<value><string>E_MY_EVENT</string></value>\n</param>\n"
                    b"<param>\n<name>ip</name>\n<value><string>192.168.2.11</string></value>\n"
                    b"</param>\n</params>\n</methodCall>")

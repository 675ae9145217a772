"""EVI MI commands and the subscriber table: expiry (lazy, whole seconds,
strict), refresh on re-subscribe, `expire` 0, error replies (docs/protocols/evi.md §2)."""

import json

import pytest

from opensips_fs.config import EventHttpSettings, EventXmlRpcSettings, EviTransportSettings
from opensips_fs.evi.registry import EviRegistry
from support.sink import TcpSink, UdpSink
from opensips_fs.jsonenc import dumps
from opensips_fs.mi.registry import MiRegistry
from opensips_fs.stats import Stats

pytestmark = pytest.mark.timeout(20)


class Clock:
    def __init__(self, now=1_000_000.25):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def env():
    stats = Stats()
    evi = EviRegistry(stats, {"event_datagram": EviTransportSettings(),
                              "event_stream": EviTransportSettings(),
                              "event_xmlrpc": EventXmlRpcSettings(), "event_http": EventHttpSettings()})
    evi.clock = Clock()
    mi = MiRegistry(stats)
    mi.register(evi.mi_commands())
    evi.start()
    udp = UdpSink()
    yield evi, mi, udp
    evi.stop()
    udp.close()


def call(mi, method, params=None):
    request = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        request["params"] = params
    reply = json.loads(mi.handle(dumps(request)))
    return reply.get("result", reply.get("error"))


def subs(mi, event="E_FREESWITCH"):
    result = call(mi, "subscribers_list", [event])
    return result["Event"].get("Subscribers", [])


def test_default_expire_and_both_name_styles(env):
    evi, mi, udp = env
    assert call(mi, "evi:subscribe", ["E_FREESWITCH", udp.socket]) == "OK"
    assert subs(mi) == [{"socket": udp.socket, "expire": 3600, "ttl": 3600}]
    assert call(mi, "evi:list")["Events"][8] == {"name": "E_FREESWITCH", "id": 8}
    assert call(mi, "evi:subscribers")["Events"][0]["name"] == "E_FREESWITCH"
    assert call(mi, "evi:raise", ["E_FREESWITCH"]) == "OK"
    assert udp.wait_for(1)
    assert udp.payloads == [b'{"jsonrpc":"2.0","method":"E_FREESWITCH"}']


def test_expire_is_lazy_whole_seconds_and_strict(env):
    evi, mi, udp = env
    clock = evi.clock
    clock.now = 1_000_000.9
    assert call(mi, "event_subscribe", ["E_FREESWITCH", udp.socket, 2]) == "OK"
    clock.now = 1_000_002.99          # since + expire == now: still subscribed
    assert subs(mi) == [{"socket": udp.socket, "expire": 2, "ttl": "expired"}]
    evi.raise_freeswitch("DTMF", "h", b'{"Event-Name":"DTMF"}')
    assert udp.wait_for(1)
    clock.now = 1_000_003.0           # now > since + expire: removed on raise
    evi.raise_freeswitch("DTMF", "h", b'{"Event-Name":"DTMF","n":2}')
    assert not evi.has_subscribers("E_FREESWITCH")
    assert call(mi, "subscribers_list") == {"Events": []}
    assert call(mi, "subscribers_list", {"event": "E_FREESWITCH"}) == {"Event": {}}
    assert call(mi, "raise_event", ["E_FREESWITCH"]) == {
        "code": 480, "message": "Temporarily Unavailable"}
    assert not udp.wait_for(2, timeout=0.2)
    assert len(udp.payloads) == 1


def test_ttl_counts_down(env):
    evi, mi, udp = env
    call(mi, "event_subscribe", ["E_FREESWITCH", udp.socket, 10])
    evi.clock.now += 3
    assert subs(mi)[0]["ttl"] == 7


def test_expire_zero_stops_deliveries_at_once_and_is_listed_until_the_next_second(env):
    evi, mi, udp = env
    clock = evi.clock
    clock.now = 1_000_000.1
    call(mi, "event_subscribe", ["E_FREESWITCH", udp.socket])
    clock.now = 1_000_000.5
    assert call(mi, "event_subscribe", ["E_FREESWITCH", udp.socket, 0]) == "OK"
    # listed as OpenSIPS lists it, but nothing is delivered any more (ours)
    assert subs(mi) == [{"socket": udp.socket, "expire": 0, "ttl": "expired"}]
    assert evi.destinations() == []
    assert not evi.has_subscribers("E_FREESWITCH")
    evi.raise_freeswitch("DTMF", "h", b"{}")
    assert call(mi, "raise_event", ["E_FREESWITCH"]) == {
        "code": 480, "message": "Temporarily Unavailable"}
    assert not udp.wait_for(1, timeout=0.2)
    # subscribing again within the second delivers again
    assert call(mi, "event_subscribe", ["E_FREESWITCH", udp.socket, 60]) == "OK"
    evi.raise_freeswitch("DTMF", "h", b"{}")
    assert udp.wait_for(1)
    call(mi, "event_subscribe", ["E_FREESWITCH", udp.socket, 0])
    clock.now = 1_000_001.0
    assert subs(mi) == []
    # unknown socket with expire 0: OK, no destination, gone a second later
    assert call(mi, "event_subscribe", ["E_FREESWITCH", "udp:127.0.0.1:9", "0"]) == "OK"
    assert evi.destinations() == []
    clock.now += 1
    assert call(mi, "subscribers_list") == {"Events": []}


def test_resubscribe_refreshes_in_place(env):
    evi, mi, udp = env
    clock = evi.clock
    call(mi, "event_subscribe", ["E_FREESWITCH", udp.socket, 100])
    call(mi, "event_subscribe", ["E_FREESWITCH", "tcp:127.0.0.1:9/m", 100])
    clock.now += 50
    assert call(mi, "event_subscribe", ["E_FREESWITCH", udp.socket, "60"]) == "OK"
    assert subs(mi) == [
        {"socket": "tcp:127.0.0.1:9/m", "expire": 100, "ttl": 50},
        {"socket": udp.socket, "expire": 60, "ttl": 60},
    ]
    # tcp with and without /method are different subscribers
    call(mi, "event_subscribe", ["E_FREESWITCH", "tcp:127.0.0.1:9", 5])
    assert [s["socket"] for s in subs(mi)] == [
        "tcp:127.0.0.1:9", "tcp:127.0.0.1:9/m", udp.socket]
    # they share one destination (one connection per host:port)
    assert sorted(d.label for d in evi.destinations()) == [
        "tcp:127.0.0.1:9", udp.socket]


def test_subscribers_list_one_socket(env):
    evi, mi, udp = env
    call(mi, "event_subscribe", ["E_FREESWITCH", udp.socket, 30])
    assert call(mi, "subscribers_list", ["E_FREESWITCH", udp.socket]) == {
        "Event": {"name": "E_FREESWITCH", "id": 8,
                  "Subscriber": {"socket": udp.socket, "expire": 30, "ttl": 30}}}
    for socket in ("udp:127.0.0.1:1", "garbage", "udp:127.0.0.1"):
        assert call(mi, "subscribers_list", ["E_FREESWITCH", socket]) == {
            "code": 404, "message": "Subscriber does not exist"}
    assert call(mi, "subscribers_list", ["E_NOPE"]) == {
        "code": 404, "message": "Event not published"}


BAD_VALUE = {"code": 400, "message": "Bad parameter value"}


@pytest.mark.parametrize("socket", [
    "udp:127.0.0.1", "udp:127.0.0.1:0", "udp:127.0.0.1:65536", "udp::9500",
    "udp:127.0.0.1:95x0", "UDP:127.0.0.1:9500", "foo:127.0.0.1:9", "rabbitmq:h:1",
    "tcp:127.0.0.1:", "unix:", "xmlrpc:127.0.0.1:8080", "xmlrpc:127.0.0.1:80:",
    "http://", "http://:80/x", "http://h:99999/x", "127.0.0.1:9500",
])
def test_bad_sockets(env, socket):
    evi, mi, udp = env
    assert call(mi, "event_subscribe", ["E_FREESWITCH", socket]) == BAD_VALUE
    assert call(mi, "subscribers_list") == {"Events": []}


def test_transport_module_not_loaded():
    stats = Stats()
    evi = EviRegistry(stats, {"event_datagram": EviTransportSettings()})
    mi = MiRegistry(stats)
    mi.register(evi.mi_commands())
    assert call(mi, "event_subscribe", ["E_FREESWITCH", "tcp:127.0.0.1:9"]) == BAD_VALUE
    assert call(mi, "event_subscribe", ["E_FREESWITCH", "http://127.0.0.1:9/"]) == BAD_VALUE
    assert call(mi, "event_subscribe", ["E_FREESWITCH", "udp:127.0.0.1:9"]) == "OK"


def test_subscribe_errors_in_openSIPS_order(env):
    evi, mi, udp = env
    bad = {"code": -32602, "message": "Invalid params"}
    assert call(mi, "event_subscribe", ["E_NOPE", "nonsense", "abc"]) == {
        **bad, "data": "Bad type for parameter 'expire'"}
    assert call(mi, "event_subscribe", ["E_NOPE", "nonsense", -1]) == {
        **bad, "data": "Negative expire value"}
    assert call(mi, "event_subscribe", ["", udp.socket]) == {
        **bad, "data": "Bad type for parameter 'event'"}
    assert call(mi, "event_subscribe", ["E_FREESWITCH", ""]) == {
        **bad, "data": "Bad type for parameter 'socket'"}
    assert call(mi, "event_subscribe", ["E_NOPE", udp.socket]) == BAD_VALUE
    assert call(mi, "event_subscribe", {"event": "E_FREESWITCH"}) == {
        **bad, "data": "Too few or too many parameters"}
    assert call(mi, "event_subscribe", {"event": "E_FREESWITCH", "socket": udp.socket,
                                        "expire": "60"}) == "OK"
    assert subs(mi)[0]["expire"] == 60


def test_other_transports_are_listed_as_written(env):
    evi, mi, udp = env
    sockets = ["udp:localhost:9", "jsonrpc:127.0.0.1:9/x", "tcp:localhost:09",
               "unix:/tmp/nowhere.sock", "xmlrpc:127.0.0.1:9/p/q:notify",
               "http://u:secret@127.0.0.1:9/hook?a=1", "https://localhost/x"]
    for socket in sockets:
        assert call(mi, "event_subscribe", ["E_CORE_THRESHOLD", socket, 10]) == "OK"
    listed = [s["socket"] for s in subs(mi, "E_CORE_THRESHOLD")]
    assert listed == [
        "https://localhost/x", "http://u:***@127.0.0.1:9/hook?a=1",
        "xmlrpc:127.0.0.1:9/p/q:notify", "unix:/tmp/nowhere.sock",
        "tcp:localhost:9", "jsonrpc:127.0.0.1:9/x", "udp:localhost:9"]
    assert "secret" not in json.dumps(call(mi, "evi_status"))
    assert "secret" not in json.dumps(call(mi, "subscribers_list"))


@pytest.mark.parametrize("params,error", [
    ({"name": "X"}, {"code": 400, "message": "No Params"}),
    (True, {"code": 400, "message": "No Params"}),
    (None, {"code": 400, "message": "No Params"}),
    ("not json", {"code": 400, "message": "Bad Params"}),
    ("[1]", {"code": 400, "message": "Bad Params"}),
    (5, {"code": 400, "message": "Bad Params"}),
    (["a", {"b": 1}], {"code": 400, "message": "Bad Params"}),
    (["a", None], {"code": 400, "message": "Bad Params"}),
])
def test_raise_event_bad_params(env, params, error):
    evi, mi, udp = env
    call(mi, "event_subscribe", ["E_FREESWITCH", udp.socket])
    assert call(mi, "raise_event", {"event": "E_FREESWITCH", "params": params}) == error
    assert not udp.wait_for(1, timeout=0.1)


def test_raise_event_order_of_checks(env):
    evi, mi, udp = env
    assert call(mi, "raise_event", ["E_NOPE", "junk"]) == {
        "code": 404, "message": "Event not registered"}
    assert call(mi, "raise_event", ["E_CORE_LOG", "junk"]) == {
        "code": 480, "message": "Temporarily Unavailable"}


def test_raise_event_params_forms(env):
    evi, mi, udp = env
    call(mi, "event_subscribe", ["E_CORE_THRESHOLD", udp.socket])
    for params in (["a", 7, 1.9], [], '{"k":"v","k":2,"f":-1.5,"big":99999999999}'):
        assert call(mi, "raise_event", ["E_CORE_THRESHOLD", params]) == "OK"
    assert udp.wait_for(3)
    assert udp.payloads == [
        b'{"jsonrpc":"2.0","method":"E_CORE_THRESHOLD","params":{"":"a","":"7","":"1"}}',
        b'{"jsonrpc":"2.0","method":"E_CORE_THRESHOLD"}',
        b'{"jsonrpc":"2.0","method":"E_CORE_THRESHOLD","params":'
        b'{"k":"v","k":2,"f":-1,"big":2147483647}}',
    ]


def test_evi_status_shape(env):
    evi, mi, udp = env
    tcp = TcpSink()
    try:
        call(mi, "event_subscribe", ["E_FREESWITCH", udp.socket])
        call(mi, "event_subscribe", ["E_FREESWITCH", tcp.socket])
        evi.raise_freeswitch("DTMF", "h", b"{}")
        assert udp.wait_for(1) and tcp.wait_for(1)
        status = call(mi, "evi_status")["Destinations"]
        assert [list(d) for d in status] == [[
            "socket", "transport", "queued", "queued_bytes", "sent", "dropped", "retried",
            "send_errors", "state", "last_error"]] * 2
        assert [(d["socket"], d["transport"], d["sent"], d["state"]) for d in status] == [
            (udp.socket, "udp", 1, "ready"), (tcp.socket, "tcp", 1, "connected")]
        assert evi.stats.counter("evi", "notifications_sent").value == 2
    finally:
        tcp.close()


def test_raising_an_unpublished_event_is_ignored(env, caplog):
    evi, mi, udp = env
    evi.raise_event("E_NOT_PUBLISHED", [("a", "b")])
    assert "not a published event" in caplog.text
    assert call(mi, "events_list")["Events"][-1] == {"name": "E_CORE_LOG", "id": 9}

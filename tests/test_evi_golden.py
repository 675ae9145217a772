"""EVI against the OpenSIPS recordings: MI replies byte for byte (through the
MI registry) and the exact bytes UDP and TCP subscribers receive.

The recordings used sinks on fixed ports 9500 (udp) / 9501 (tcp); here the
sinks listen on ephemeral ports and the port numbers are substituted. The
`evi_*` recordings ran on a configuration with two script events
(E_SCRIPT_CMD, E_SCRIPT_RESULT) that opensips-fs does not have: those events
and their route subscribers are removed from the expected replies and the
ids renumbered to the plain configuration (events_list depends on the script
routes: tests/golden/README.md, "OpenSIPS set-up"). `ttl` is masked (it counts down).
"""

import json

import gevent
import pytest

from support import golden
from opensips_fs.config import EviTransportSettings
from opensips_fs.evi.registry import PUBLISHED_EVENTS, EviRegistry
from support.sink import TcpSink, UdpSink
from opensips_fs.jsonenc import dumps
from opensips_fs.mi.registry import MiRegistry
from opensips_fs.stats import Stats

GOLDEN = golden.golden_dir("opensips")

pytestmark = pytest.mark.timeout(30)


def load(name):
    return json.loads((GOLDEN / name).read_text())


def raw(text):
    return text.encode("latin-1")


@pytest.fixture
def env():
    stats = Stats()
    evi = EviRegistry(stats, {"event_datagram": EviTransportSettings(), "event_stream": EviTransportSettings()})
    mi = MiRegistry(stats)
    mi.register(evi.mi_commands())
    evi.start()
    udp, tcp = UdpSink(), TcpSink()
    yield evi, mi, udp, tcp
    evi.stop()
    udp.close()
    tcp.close()


def ports(text, udp, tcp):
    return (text.replace("127.0.0.1:9500", f"127.0.0.1:{udp.port}")
                .replace("127.0.0.1:9501", f"127.0.0.1:{tcp.port}"))


def plain_ids(value):
    """Drop the script events and renumber ids as in the plain configuration."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "Events" and isinstance(item, list):
                item = [e for e in item if not e["name"].startswith("E_SCRIPT_")]
            out[key] = plain_ids(item)
        if "name" in out and "id" in out and out["name"] in PUBLISHED_EVENTS:
            out["id"] = PUBLISHED_EVENTS.index(out["name"])
        return out
    if isinstance(value, list):
        return [plain_ids(v) for v in value]
    return value


def mask_ttl(value, path=()):
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "ttl" and isinstance(item, int):
                assert value["expire"] - 1 <= item <= value["expire"], value
                item = "<ttl>"
            out[key] = mask_ttl(item)
        return out
    if isinstance(value, list):
        return [mask_ttl(v) for v in value]
    return value


def normalized(body: bytes, script_config: bool) -> bytes:
    reply = json.loads(body)
    if script_config:
        reply = plain_ids(reply)
    return dumps(mask_ttl(reply))


def replay(mi, scenario, udp, tcp, skip=(), script_config=True):
    for exchange in scenario["exchanges"]:
        if exchange["transport"] != "http" or exchange["label"] in skip:
            continue
        request = raw(ports(exchange["request_body"], udp, tcp))
        expected = raw(ports(exchange["response_body"], udp, tcp))
        got = mi.handle(request)
        assert normalized(got, script_config) == normalized(expected, script_config), \
            exchange["label"]
        yield exchange


def test_plain_events_and_subscribers_list(env):
    evi, mi, udp, tcp = env
    scenario = load("plain_events_and_subscribers_list.json")
    done = list(replay(mi, scenario, udp, tcp, skip={"which"}, script_config=False))
    assert len(done) == 5
    # events_list is exact, ids included (same configuration)
    first = scenario["exchanges"][0]
    assert mi.handle(raw(first["request_body"])) == raw(first["response_body"])


def test_events_list_before_any_subscriber(env):
    evi, mi, udp, tcp = env
    done = list(replay(mi, load("evi_events_list.json"), udp, tcp))
    assert [e["label"] for e in done][-1] == "raise_event E_FREESWITCH with no subscribers"
    assert udp.payloads == [] and tcp.chunks == []


def test_event_subscribe_replies(env):
    evi, mi, udp, tcp = env
    done = list(replay(mi, load("evi_event_subscribe.json"), udp, tcp,
                       skip={"positional, E_SCRIPT_RESULT -> udp 9502"}))
    assert len(done) == 11
    subs = json.loads(mi.handle(b'{"jsonrpc":"2.0","method":"subscribers_list","id":1}'))
    assert [s["socket"] for s in subs["result"]["Events"][0]["Subscribers"]] == [
        f"tcp:127.0.0.1:{tcp.port}", f"udp:127.0.0.1:{udp.port}"]


# [EMU] docs/protocols/evi.md §4.2: OpenSIPS sends freed memory for true/null/objects.
EMU_NON_STRING = (b'{"jsonrpc":"2.0","method":"E_FREESWITCH","params":{"n":5,"f":1,'
                  b'"b":"true","z":"null","o":"{\\"x\\":1}","a":"[1]"}}')


def expected_captures(scenario, udp, tcp, fix=None):
    datagrams, stream = [], b""
    for capture in scenario["evi_capture"]:
        if "data" not in capture:
            continue
        data = raw(capture["data"])
        if fix:
            data = fix(data)
        if capture["transport"] == "udp":
            datagrams.append(data)
        else:
            stream += data
    return datagrams, stream


def test_raise_event_mi_payloads(env):
    evi, mi, udp, tcp = env
    for sink in (udp, tcp):
        reply = mi.handle(dumps({"jsonrpc": "2.0", "method": "event_subscribe",
                                 "params": ["E_FREESWITCH", sink.socket], "id": 0}))
        assert reply == b'{"jsonrpc":"2.0","result":"OK","id":0}'
    scenario = load("evi_raise_event_mi.json")
    done = list(replay(mi, scenario, udp, tcp))
    assert len(done) == 8

    def fix(data):
        return EMU_NON_STRING if b'"n":5' in data else data

    datagrams, stream = expected_captures(scenario, udp, tcp, fix)
    assert len(datagrams) == 5
    assert udp.wait_for(5) and tcp.wait_for(5)
    assert udp.payloads == datagrams
    assert b"".join(tcp.chunks) == stream
    assert tcp.connections == 1


def esl_bodies(scenario):
    """The text/event-json bodies the recorded ESL peer sent, in order."""
    bodies = []
    for wire in scenario["esl_wire"]:
        if wire["dir"] == "tx" and "Content-Type: text/event-json" in wire["data"]:
            bodies.append(raw(wire["data"]).split(b"\n\n", 1)[1])
    return bodies


def test_e_freeswitch_payload_from_esl_bodies(env):
    evi, mi, udp, tcp = env
    scenario = load("evi_e_freeswitch_payload.json")
    for sink in (udp, tcp):
        evi.subscribe("E_FREESWITCH", sink.socket, 3600)
    subscribed = {"CHANNEL_STATE", "DTMF", "BACKGROUND_JOB", "CUSTOM"}
    for body in esl_bodies(scenario):
        name = json.loads(body)["Event-Name"]
        if name in subscribed:   # the ESL room filters unsubscribed names
            evi.raise_freeswitch(name, "127.0.0.1", body)
            gevent.sleep(0.01)
    datagrams, stream = expected_captures(scenario, udp, tcp)
    assert len(datagrams) == 4
    assert udp.wait_for(4) and tcp.wait_for(4)
    assert udp.payloads == datagrams
    assert b"".join(tcp.chunks) == stream


def test_unsolicited_dtmf_payload(env):
    """unsolicited_events: the one event raised (the subscribed DTMF)."""
    evi, mi, udp, tcp = env
    scenario = load("unsolicited_events.json")
    evi.subscribe("E_FREESWITCH", udp.socket, 3600)
    body = [b for b in esl_bodies(scenario) if b"\"DTMF-Digit\":\"3\"" in b][0]
    evi.raise_freeswitch("DTMF", "127.0.0.1", body)
    datagrams, _ = expected_captures(scenario, udp, tcp)
    assert udp.wait_for(1)
    assert udp.payloads == datagrams

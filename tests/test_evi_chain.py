"""The whole relay in-process: the FreeSWITCH simulator -> ESL manager ->
scripting -> EVI -> UDP and TCP subscribers, replaying the ESL bodies of the
`evi_e_freeswitch_payload`, `plain_*` and `unsolicited_*` recordings and
comparing the exact bytes the subscribers receive."""

import json
import time

import gevent
import pytest

from support import golden
from opensips_fs import config
from opensips_fs.app import App
from support.sink import TcpSink, UdpSink
from opensips_fs.jsonenc import dumps
from opensips_fs.sim import FsSimulator, SimSettings

pytestmark = pytest.mark.timeout(30)

GOLDEN = golden.golden_dir("opensips")


def load(name):
    return json.loads((GOLDEN / name).read_text())


def raw(text):
    return text.encode("latin-1")


@pytest.fixture
def chain(tmp_path):
    sim = FsSimulator(SimSettings(host="127.0.0.1", port=0, password="ClueCon", heartbeat=0)).start()
    cfg = config.loads(f'''
log_level=1
loadmodule "freeswitch.so"
loadmodule "freeswitch_scripting.so"
modparam("freeswitch_scripting", "fs_subscribe",
         ":ClueCon@127.0.0.1:{sim.port}?CHANNEL_STATE,DTMF,BACKGROUND_JOB,CUSTOM")
loadmodule "event_datagram.so"
loadmodule "event_stream.so"
''', str(tmp_path / "chain.cfg"))
    app = App(cfg).start()
    udp, tcp = UdpSink(), TcpSink()
    deadline = time.monotonic() + 10
    while not [c for c in sim.clients if c.authed and c.events_on]:
        assert time.monotonic() < deadline, "opensips-fs never subscribed to the simulator"
        gevent.sleep(0.02)
    client = sim.clients[0]
    while len(client.event_list) < 4 and time.monotonic() < deadline:
        gevent.sleep(0.02)

    def mi(method, params=None):
        request = {"jsonrpc": "2.0", "method": method, "id": 1}
        if params is not None:
            request["params"] = params
        assert app.registry is not None
        reply = app.registry.handle(dumps(request))
        assert reply is not None
        return json.loads(reply)

    for sink in (udp, tcp):
        assert mi("event_subscribe", ["E_FREESWITCH", sink.socket])["result"] == "OK"
    yield sim, app, udp, tcp, mi
    udp.close()
    tcp.close()
    app.stop()
    sim.stop()


def esl_frames(scenario):
    """Every frame the recorded ESL peer pushed after the handshake, in order."""
    frames = []
    for wire in scenario["esl_wire"]:
        data = wire["data"]
        if wire["dir"] == "tx" and wire["esl_port"] == 8021 and (
                "text/event" in data or "api/response" in data or "command/reply\nReply-Text: +OK stray" in data):
            frames.append(raw(data))
    return frames


def captures(scenario):
    datagrams, stream = [], b""
    for capture in scenario["evi_capture"]:
        if "data" in capture:
            if capture["transport"] == "udp" and capture["port"] == 9500:
                datagrams.append(raw(capture["data"]))
            elif capture["transport"] == "tcp":
                stream += raw(capture["data"])
    return datagrams, stream


def test_e_freeswitch_payload_through_the_whole_chain(chain):
    sim, app, udp, tcp, mi = chain
    scenario = load("evi_e_freeswitch_payload.json")
    for frame in esl_frames(scenario):
        header, _, body = frame.partition(b"\n\n")
        assert sim.push_event(body, force=True) == 1
        gevent.sleep(0.02)
    # a subscribed marker after the last recorded frame (HEARTBEAT): events of
    # one socket are relayed in order, so once the marker is in, anything the
    # recorded frames would raise is in too
    marker = b'{"Event-Name":"DTMF","DTMF-Digit":"#"}'
    assert sim.push_event(marker, force=True) == 1
    datagrams, stream = captures(scenario)
    assert len(datagrams) == 4               # the unsubscribed HEARTBEAT is not raised
    assert udp.wait_for(5) and tcp.wait_for(5)
    assert udp.payloads[:4] == datagrams
    assert json.loads(udp.payloads[4])["params"]["body"] == marker.decode()
    received = b"".join(tcp.chunks)
    assert received.startswith(stream)
    assert json.loads(received[len(stream):])["params"]["body"] == marker.decode()


def test_unsolicited_events_through_the_whole_chain(chain):
    """CHANNEL_HANGUP (not subscribed), non-JSON, event-plain, stray replies:
    nothing raised, the socket stays up; the subscribed DTMF is raised with
    the recorded bytes. [EMU] a `dtmf` event name matches the DTMF
    subscription case-insensitively, as FreeSWITCH matches names (docs/protocols/scripting.md §10),
    so it is raised too, with `name` as FreeSWITCH sent it."""
    sim, app, udp, tcp, mi = chain
    scenario = load("unsolicited_events.json")
    for exchange in scenario["exchanges"]:
        if exchange["transport"] != "fake_esl_control":
            continue
        if "pushed_raw" in exchange and exchange["pushed_raw"]:
            sim.push_raw(raw(exchange["pushed_raw"]))
        else:
            sim.push_event(dumps(exchange["pushed"]), force=True)
        gevent.sleep(0.05)
    no_name = load("unsolicited_no_event_name.json")["exchanges"][0]["pushed_raw"]
    sim.push_raw(raw(no_name))                       # crashes OpenSIPS; not us
    sim.push_event(b'{"Event-Name":"DTMF","DTMF-Digit":"7"}', force=True)
    datagrams, _ = captures(scenario)
    assert udp.wait_for(3)  # the last event pushed is the third: in order, nothing else is due
    assert udp.payloads[0] == datagrams[0]
    assert udp.payloads[1] == (b'{"jsonrpc":"2.0","method":"E_FREESWITCH","params":{"name":"dtmf",'
                               b'"sender":"127.0.0.1","body":"{\\"Event-Name\\":\\"dtmf\\",'
                               b'\\"DTMF-Digit\\":\\"4\\"}"}}')
    assert json.loads(udp.payloads[2])["params"]["body"] == '{"Event-Name":"DTMF","DTMF-Digit":"7"}'
    assert len(udp.payloads) == 3
    sockets = mi("fs_list")["result"]["Sockets"]         # still alive
    assert [s["if"] for s in sockets] == [f"127.0.0.1:{sim.port}"]
    assert sorted(sockets[0]["Events"]) == ["BACKGROUND_JOB", "CHANNEL_STATE", "CUSTOM", "DTMF"]


def test_plain_lists_with_the_service_running(chain):
    sim, app, udp, tcp, mi = chain
    scenario = load("plain_events_and_subscribers_list.json")
    first = scenario["exchanges"][0]
    assert app.registry.handle(raw(first["request_body"])) == raw(first["response_body"])
    listed = mi("subscribers_list")["result"]["Events"]
    assert [(e["name"], e["id"]) for e in listed] == [("E_FREESWITCH", 8)]
    subscribers = listed[0]["Subscribers"]
    assert [(s["socket"], s["expire"]) for s in subscribers] == [
        (tcp.socket, 3600), (udp.socket, 3600)]
    assert all(s["ttl"] in (3599, 3600) for s in subscribers)    # it counts down
    status = mi("evi_status")["result"]["Destinations"]
    assert [d["socket"] for d in status] == [udp.socket, tcp.socket]
    stats = mi("get_statistics", [["evi:"]])["result"]
    assert {"evi:notifications_sent", "evi:notifications_dropped",
            "evi:notifications_retried", "evi:send_errors"} <= set(stats)

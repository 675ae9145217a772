"""event_rabbitmq delivery against a real RabbitMQ broker (started once per
run, tests/support/rabbitmq.py), consumed with a real AMQP client (pika).

What OpenSIPS loses in the recording, we must not: a broker restart under
load (every event arrives, duplicates counted), a missing exchange, a
refused login, an unroutable key (logged once, counted, recovered without
a restart), a dead broker found by heartbeats; plus `persistent`, TLS and
`expire`."""

import json
import logging
import os
import signal
import time

import gevent
import pytest

from opensips_fs.config import EventRabbitmqSettings, EviTransportSettings
from opensips_fs.evi.registry import EviRegistry
from support.sink import UdpSink
from opensips_fs.mi.commands import MiError
from opensips_fs.stats import Stats
from support import rabbitmq
from support.rabbitmq import Consumer

pytestmark = pytest.mark.timeout(90)


def registry(**settings):
    evi = EviRegistry(Stats(), {"event_datagram": EviTransportSettings(),
                                "event_rabbitmq": EventRabbitmqSettings(**settings)})
    evi.start()
    return evi


@pytest.fixture
def consumer(rabbitmq_broker):
    consumer = Consumer(rabbitmq_broker)
    yield consumer
    consumer.close()


def sock(broker, rest, credentials=""):
    return f"rabbitmq:{credentials}127.0.0.1:{broker.port}/{rest}"


def body(seq):
    return b'{"Event-Name":"CUSTOM","Seq":"%d"}' % seq


def seq_of(payload: bytes) -> int:
    return int(json.loads(json.loads(payload)["params"]["body"])["Seq"])


def only_destination(evi, suffix):
    found = [d for d in evi.destinations() if d.label.endswith(suffix)]
    assert len(found) == 1, [d.label for d in evi.destinations()]
    return found[0]


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        gevent.sleep(0.05)
    return predicate()


def warnings_about(caplog, text):
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_properties_only_delivery_mode_2_when_persistent(rabbitmq_broker, consumer):
    consumer.queue("props_plain")
    consumer.queue("props_persistent")
    consumer.queue("props_ex", "props_exchange", "rk")
    evi = registry()
    try:
        for rest in ("props_plain", "persistent?props_persistent",
                     "exchange=props_exchange;persistent?rk"):
            evi.subscribe("E_FREESWITCH", sock(rabbitmq_broker, rest), 3600)
        for i in range(3):
            evi.raise_freeswitch("CUSTOM", "127.0.0.1", body(i))
        plain = consumer.messages("props_plain", 3)
        persistent = consumer.messages("props_persistent", 3)
        routed = consumer.messages("props_ex", 3)
    finally:
        evi.stop()
    assert [seq_of(b) for b, _, _ in plain] == [seq_of(b) for b, _, _ in persistent] == [0, 1, 2]
    for got, mode in ((plain, None), (persistent, 2), (routed, 2)):
        for payload, properties, method in got:
            assert properties.delivery_mode == mode
            others = {k: v for k, v in vars(properties).items() if k != "delivery_mode"}
            assert set(others.values()) == {None}, others
    assert {m.exchange for _, _, m in routed} == {"props_exchange"}
    assert {m.routing_key for _, _, m in routed} == {"rk"}
    assert {m.exchange for _, _, m in plain} == {""}


def test_broker_restart_under_load_loses_nothing(rabbitmq_broker, consumer):
    """Events raised before, during and after a broker restart all arrive,
    in order; re-published unconfirmed ones are the only duplicates, and
    they are counted. The UDP subscriber beside it is not slowed down."""
    consumer.queue("restart_q")
    udp = UdpSink()
    evi = registry()
    evi.subscribe("E_FREESWITCH", sock(rabbitmq_broker, "persistent?restart_q"), 3600)
    evi.subscribe("E_FREESWITCH", udp.socket, 3600)
    raised = [0]
    running = [True]

    def raiser():
        while running[0]:
            for _ in range(20):                       # ~800 events/s
                evi.raise_freeswitch("CUSTOM", "127.0.0.1", body(raised[0]))
                raised[0] += 1
            gevent.sleep(0.025)

    worker = gevent.spawn(raiser)
    try:
        gevent.sleep(1.0)
        consumer.close()
        rabbitmq_broker.stop()
        assert wait_until(lambda: len(udp.payloads) >= raised[0] - 100, 5)
        down_since = raised[0]
        gevent.sleep(1.0)                             # events while the broker is down
        assert raised[0] > down_since + 300
        assert len(udp.payloads) >= raised[0] - 100           # UDP keeps flowing meanwhile
        rabbitmq_broker.up()
        gevent.sleep(1.0)
        running[0] = False
        worker.join()
        dest = only_destination(evi, "/restart_q")
        assert wait_until(lambda: dest.queued == 0, 30), dest.status()
        status = dest.status()
        got = consumer.drain("restart_q", settle=1.0)
    finally:
        running[0] = False
        evi.stop()
        udp.close()
    total = raised[0]
    seqs = [seq_of(payload) for payload, _, _ in got]
    assert sorted(set(seqs)) == list(range(total)), "every event arrives"
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == list(range(total)), "in order"
    duplicates = len(seqs) - total
    assert status["sent"] == total and status["dropped"] == 0
    assert status["send_errors"] >= 1            # the outage was seen and counted
    assert 0 <= duplicates <= status["retried"]
    assert len(udp.payloads) == total


def test_missing_exchange_is_logged_once_and_recovers(rabbitmq_broker, consumer, caplog):
    consumer.delete_exchange("late_exchange")
    evi = registry()
    try:
        evi.subscribe("E_FREESWITCH", sock(rabbitmq_broker, "exchange=late_exchange?rk"), 3600)
        for i in range(5):
            evi.raise_freeswitch("CUSTOM", "127.0.0.1", body(i))
        dest = only_destination(evi, "/late_exchange?rk")
        assert wait_until(lambda: dest.send_errors >= 3, 10)   # retried, backing off
        status = dest.status()
        assert "404 NOT_FOUND - no exchange 'late_exchange'" in status["last_error"]
        assert status["sent"] == 0 and status["queued"] == 5
        assert len(warnings_about(caplog, "404 NOT_FOUND")) == 1
        consumer.queue("late_q", "late_exchange", "rk")          # the broker side is fixed
        got = consumer.messages("late_q", 5)
        evi.raise_freeswitch("CUSTOM", "127.0.0.1", body(5))
        got += consumer.messages("late_q", 1)
        assert wait_until(lambda: dest.sent == 6)
    finally:
        evi.stop()
    assert [seq_of(b) for b, _, _ in got] == list(range(6))


def test_refused_login_is_logged_once_and_recovers(rabbitmq_broker, consumer, caplog):
    consumer.queue("login_q")
    evi = registry()
    try:
        evi.subscribe("E_FREESWITCH", sock(rabbitmq_broker, "login_q", "carol:s3cr3t@"), 3600)
        for i in range(3):
            evi.raise_freeswitch("CUSTOM", "127.0.0.1", body(i))
        dest = only_destination(evi, "/login_q")
        assert wait_until(lambda: dest.send_errors >= 2, 10)
        assert "403 ACCESS_REFUSED" in dest.status()["last_error"]
        assert len(warnings_about(caplog, "403 ACCESS_REFUSED")) == 1
        rabbitmq_broker.ctl("add_user", "carol", "s3cr3t")
        rabbitmq_broker.ctl("set_permissions", "-p", "/", "carol", ".*", ".*", ".*")
        got = consumer.messages("login_q", 3, timeout=15)
        status = dest.status()
    finally:
        evi.stop()
        rabbitmq_broker.ctl("delete_user", "carol")
    assert [seq_of(b) for b, _, _ in got] == [0, 1, 2]
    assert "s3cr3t" not in caplog.text and "s3cr3t" not in json.dumps(status)
    assert status["socket"] == f"rabbitmq:carol@127.0.0.1:{rabbitmq_broker.port}/login_q"


def test_unroutable_is_counted_logged_once_and_recovers(rabbitmq_broker, consumer, caplog):
    consumer._ch().queue_delete("unbound_q")
    evi = registry()
    try:
        evi.subscribe("E_FREESWITCH", sock(rabbitmq_broker, "unbound_q"), 3600)
        for i in range(3):
            evi.raise_freeswitch("CUSTOM", "127.0.0.1", body(i))
        dest = only_destination(evi, "/unbound_q")
        assert wait_until(lambda: dest.returned == 3)
        status = dest.status()
        assert status["dropped"] == 3 and status["sent"] == 0 and status["queued"] == 0
        assert "312 NO_ROUTE" in status["last_error"]
        assert len(warnings_about(caplog, "312 NO_ROUTE")) == 1
        consumer.queue("unbound_q")                    # a queue appears: routed again
        for i in range(3, 5):
            evi.raise_freeswitch("CUSTOM", "127.0.0.1", body(i))
        got = consumer.messages("unbound_q", 2)
        assert wait_until(lambda: dest.sent == 2)
    finally:
        evi.stop()
    assert [seq_of(b) for b, _, _ in got] == [3, 4]


def test_heartbeats_keep_an_idle_connection_and_find_a_dead_broker(rabbitmq_broker, consumer):
    consumer.queue("hb_q")
    evi = registry(heartbeat=1)
    try:
        evi.subscribe("E_FREESWITCH", sock(rabbitmq_broker, "hb_q"), 3600)
        evi.raise_freeswitch("CUSTOM", "127.0.0.1", body(0))
        assert len(consumer.messages("hb_q", 1)) == 1
        dest = only_destination(evi, "/hb_q")
        gevent.sleep(3.5)        # idle: the broker drops a client silent for 2 s
        evi.raise_freeswitch("CUSTOM", "127.0.0.1", body(1))
        assert len(consumer.messages("hb_q", 1)) == 1
        assert dest.send_errors == 0 and dest.retried == 0, dest.status()  # same connection
        consumer.close()
        os.killpg(rabbitmq_broker.server.pid, signal.SIGSTOP)     # frozen: no TCP reset
        try:
            frozen = time.monotonic()
            assert wait_until(lambda: dest.send_errors >= 1, 5), dest.status()
            found_after = time.monotonic() - frozen
        finally:
            os.killpg(rabbitmq_broker.server.pid, signal.SIGCONT)
        assert "heartbeat" in dest.status()["last_error"]
        # silent for two 1 s intervals counted from its last heartbeat (sent
        # every 0.5 s), checked every 0.25 s: ~2 s, plus slack for a busy machine
        assert found_after <= 2 * 1 + 1.0
        evi.raise_freeswitch("CUSTOM", "127.0.0.1", body(2))
        got = consumer.messages("hb_q", 1, timeout=15)
    finally:
        evi.stop()
    assert [seq_of(b) for b, _, _ in got] == [2]


def test_tls_with_our_ca_and_use_tls(rabbitmq_broker, consumer):
    consumer.queue("tls_q")
    plain = registry()
    try:
        with pytest.raises(MiError) as refused:      # as OpenSIPS: tls_domain needs use_tls
            plain.subscribe("E_FREESWITCH", sock(rabbitmq_broker, "tls_domain=dom?tls_q"), 3600)
        assert refused.value.code == 400 and plain.destinations() == []
    finally:
        plain.stop()
    evi = registry(use_tls=True, tls_ca_file=rabbitmq_broker.ca_file)
    try:
        evi.subscribe("E_FREESWITCH", f"rabbitmq:127.0.0.1:{rabbitmq_broker.tls_port}"
                      "/tls_domain=dom?tls_q", 3600)
        evi.raise_freeswitch("CUSTOM", "127.0.0.1", body(7))
        got = consumer.messages("tls_q", 1)
    finally:
        evi.stop()
    assert [seq_of(b) for b, _, _ in got] == [7]


def test_tls_refuses_a_broker_our_ca_does_not_know(rabbitmq_broker, consumer, tmp_path):
    other_ca, _ = rabbitmq.make_cert(tmp_path)
    consumer.queue("tls_bad_q")
    evi = registry(use_tls=True, tls_ca_file=other_ca)
    try:
        evi.subscribe("E_FREESWITCH", f"rabbitmq:127.0.0.1:{rabbitmq_broker.tls_port}"
                      "/tls_domain=dom?tls_bad_q", 3600)
        evi.raise_freeswitch("CUSTOM", "127.0.0.1", body(1))
        dest = only_destination(evi, "/tls_bad_q")
        assert wait_until(lambda: dest.send_errors >= 1)
        assert "CERTIFICATE_VERIFY_FAILED" in dest.status()["last_error"]
    finally:
        evi.stop()
    assert consumer.drain("tls_bad_q", settle=0.3) == []


def test_expire_removes_a_rabbitmq_subscriber(rabbitmq_broker, consumer):
    consumer.queue("expire_q")
    evi = registry()
    now = [1000.0]
    evi.clock = lambda: now[0]
    try:
        evi.subscribe("E_FREESWITCH", sock(rabbitmq_broker, "expire_q"), 2)
        evi.raise_freeswitch("CUSTOM", "127.0.0.1", body(0))
        assert len(consumer.messages("expire_q", 1)) == 1
        now[0] += 3
        evi.raise_freeswitch("CUSTOM", "127.0.0.1", body(1))
        assert not evi.has_subscribers("E_FREESWITCH")
        assert wait_until(lambda: evi.destinations() == [])
    finally:
        evi.stop()
    assert consumer.drain("expire_q", settle=0.3) == []

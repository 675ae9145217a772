"""`/metrics` read as Prometheus reads it: the whole service (simulated
FreeSWITCH, SQLite table, EVI subscribers, MI over HTTP and datagram)
scraped over HTTP and parsed with prometheus-client's own parsers."""

from __future__ import annotations

import socket
import time

import pytest

from opensips_fs import __version__
from opensips_fs.mi.callstats import LATENCY_BUCKETS
from opensips_fs.sim import FsSimulator, SimSettings
from support.rabbitmq import Consumer
from support.scrape import OPENMETRICS, scrape
from support.sink import HttpSink, UdpSink
from support.stack import Stack, error, result, stack_factory
from support.waits import wait_until

pytestmark = pytest.mark.timeout(60)

EVENTS = "CHANNEL_CREATE,DTMF"
DB_ROW = {"id": 1, "username": None, "password": "ClueCon", "ip": "127.0.0.1", "port": 8022,
          "events_csv": "HEARTBEAT"}


FRESH_PAGES = 'modparam("httpd", "metrics_max_age", 0)'


@pytest.fixture
def stack(tmp_path):
    """Stacks whose /metrics page is rendered at every scrape."""
    for make in stack_factory(tmp_path):
        yield lambda **kwargs: make(httpd_params=FRESH_PAGES, **kwargs)


@pytest.fixture
def default_stack(tmp_path):
    yield from stack_factory(tmp_path)


def datagram_port(s: Stack) -> int:
    return next(server for what, _, server in s.app.transports if what == "MI datagram").address[1]


WITH_DATAGRAM = ('loadmodule "event_datagram.so"\n'
                 'loadmodule "mi_datagram.so"\n'
                 'modparam("mi_datagram", "socket_name", "udp:127.0.0.1:0")\n')


def datagram_call(port: int, body: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(5)
        udp.sendto(body, ("127.0.0.1", port))
        return udp.recv(65536)


def relay_stack(stack, tmp_path) -> tuple[Stack, FsSimulator, UdpSink]:
    """A stack with one socket from a modparam, one from the DB and a UDP
    subscriber of E_FREESWITCH that got 5 events."""
    s = stack(sims=(8021, 8022), db_rows=[DB_ROW], extra=WITH_DATAGRAM,
              modparams=f'modparam("freeswitch_scripting", "fs_subscribe", '
                        f'":ClueCon@127.0.0.1:8021?{EVENTS}")')
    sim = s.sims[8021]
    sink = UdpSink()
    assert result(s.mi("event_subscribe", {"event": "E_FREESWITCH", "socket": sink.socket})) == "OK"
    wait_until(lambda: any(c.authed and len(c.event_list) >= 2 for c in sim.clients), 10, what="subscribed")
    for n in range(5):
        sim.raise_event("DTMF", {"DTMF-Digit": str(n)})
    assert sink.wait_for(5)
    return s, sim, sink


def test_every_family_has_help_and_a_type_and_counters_end_in_total(stack, tmp_path):
    s, _, _ = relay_stack(stack, tmp_path)
    page = scrape(s.http_port)
    assert page.content_type.startswith("text/plain; version=")
    assert len(page.families) > 60
    for family in page.families.values():
        assert family.documentation, family.name
        assert family.type in ("counter", "gauge", "histogram", "info"), family.name
        assert family.name.startswith(("opensips_fs_", "process_", "python_")), family.name
        if family.type == "counter":
            assert all(sample.name.endswith("_total") for sample in family.samples), family.name
    assert page.value("opensips_fs_build_info", version=__version__) == 1
    assert page.number("process_resident_memory_bytes") > 10 << 20
    assert page.number("process_open_fds") > 5
    assert page.number("process_cpu_seconds_total") > 0
    # an OpenSIPS statistic keeps its group and name
    assert page.number("opensips_fs_freeswitch_events_received_total") >= 5
    assert page.value("opensips_fs_evi_subscribers") == 1


def test_per_socket_and_per_destination_figures(stack, tmp_path):
    s, sim, sink = relay_stack(stack, tmp_path)
    modparam_socket = f"127.0.0.1:{s.port_map[8021]}"
    db_socket = f"127.0.0.1:{s.port_map[8022]}"
    wait_until(lambda: scrape(s.http_port).value("opensips_fs_esl_socket_connected", socket=db_socket) == 1,
               10, what="DB socket connected")
    page = scrape(s.http_port)
    assert page.label_values("opensips_fs_esl_socket_connected", "socket") == {modparam_socket, db_socket}
    assert page.value("opensips_fs_esl_socket_connected", socket=modparam_socket) == 1
    assert page.value("opensips_fs_esl_socket_subscribed_events", socket=modparam_socket) == 2
    assert page.value("opensips_fs_esl_socket_pending_events", socket=modparam_socket) == 0
    relayed = page.number("opensips_fs_esl_socket_events_relayed_total", socket=modparam_socket)
    assert page.number("opensips_fs_esl_socket_events_received_total", socket=modparam_socket) >= relayed >= 5
    assert page.value("opensips_fs_esl_socket_login_failures_total", socket=modparam_socket) == 0
    for name in ("events_dropped", "events_queue_dropped", "reconnects", "connect_failures"):
        assert page.value(f"opensips_fs_esl_socket_{name}_total", socket=modparam_socket) == 0, name
    # the per-socket counts add up to the process-wide statistic
    received = [sample.value for sample in page.samples
                if sample.name == "opensips_fs_esl_socket_events_received_total"]
    assert sum(received) == page.value("opensips_fs_freeswitch_events_received_total")

    destination = {"transport": "udp", "destination": f"udp:127.0.0.1:{sink.port}"}
    assert page.value("opensips_fs_evi_destination_sent_total", **destination) == len(sink.payloads)
    assert page.value("opensips_fs_evi_destination_queued", **destination) == 0
    for name in ("dropped", "retried", "send_errors"):
        assert page.value(f"opensips_fs_evi_destination_{name}_total", **destination) == 0, name

    # the table: when it was loaded, as fs_status says; its password nowhere
    status = result(s.mi("fs_status"))["Database"]
    assert page.value("opensips_fs_freeswitch_scripting_db_last_load_timestamp_seconds") == \
        pytest.approx(status["last_load"])
    assert page.value("opensips_fs_freeswitch_scripting_db_reloads_total") == 1
    assert page.value("opensips_fs_freeswitch_scripting_db_loaded") == 1
    assert "ClueCon" not in page.text


def test_mi_requests_by_command_transport_and_outcome(stack, tmp_path):
    s, _, _ = relay_stack(stack, tmp_path)
    before = scrape(s.http_port)
    for _ in range(3):
        result(s.mi("fs_list"))
    error(s.mi("fs_subscribe", {"freeswitch_url": "127.0.0.1:1", "events": ["DTMF"]}))  # no password
    for n in range(20):   # names nobody registered: one label value for all of them
        error(s.mi(f"no_such_command_{n}"))
    port = datagram_port(s)
    datagram_call(port, b'{"jsonrpc":"2.0","method":"which","id":1}')
    datagram_call(port, b'{"jsonrpc":"2.0","method":')    # not JSON
    page = scrape(s.http_port)

    def grew(command, transport, outcome):
        name = "opensips_fs_mi_command_requests_total"
        labels = {"command": command, "transport": transport, "outcome": outcome}
        return page.number(name, **labels) - (before.value(name, **labels) or 0)

    assert grew("fs_list", "http", "ok") == 3
    assert grew("fs_subscribe", "http", "error") == 1
    assert grew("unknown", "http", "error") == 20
    assert grew("which", "datagram", "ok") == 1
    assert grew("invalid", "datagram", "error") == 1
    commands = page.label_values("opensips_fs_mi_command_requests_total", "command")
    assert not [c for c in commands if c.startswith("no_such")]

    # the latency histogram of a command counts each of its requests once
    buckets = [(sample.labels["le"], sample.value) for sample in page.samples
               if sample.name == "opensips_fs_mi_command_duration_seconds_bucket"
               and sample.labels["command"] == "fs_list"]
    assert [le for le, _ in buckets] == [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    counts = [count for _, count in buckets]
    assert counts == sorted(counts) and counts[-1] == \
        page.value("opensips_fs_mi_command_duration_seconds_count", command="fs_list") == \
        sum(page.value("opensips_fs_mi_command_requests_total", command="fs_list", transport="http",
                       outcome=outcome) or 0 for outcome in ("ok", "error"))
    assert 0 < page.number("opensips_fs_mi_command_duration_seconds_sum", command="fs_list") < counts[-1]


def test_reset_statistics_never_lowers_a_prometheus_counter(stack, tmp_path):
    s, sim, sink = relay_stack(stack, tmp_path)
    name = "opensips_fs_freeswitch_events_received_total"
    before = scrape(s.http_port).number(name)
    assert before >= 5
    assert result(s.mi("reset_statistics", {"statistics": ["events_received"]})) == "OK"
    assert result(s.mi("get_statistics", {"statistics": ["events_received"]})) == \
        {"freeswitch:events_received": 0}
    assert scrape(s.http_port).value(name) == before
    sim.raise_event("DTMF", {"DTMF-Digit": "9"})
    assert sink.wait_for(6)
    assert result(s.mi("get_statistics", {"statistics": ["events_received"]})) == \
        {"freeswitch:events_received": 1}
    assert scrape(s.http_port).value(name) == before + 1
    assert result(s.mi("reset_all_statistics")) == "OK"
    after = scrape(s.http_port)
    assert after.value(name) == before + 1
    assert after.number("opensips_fs_mi_requests_total") > 0


def test_openmetrics_when_the_scraper_asks_for_it(stack, tmp_path):
    s, _, _ = relay_stack(stack, tmp_path)
    page = scrape(s.http_port, accept=OPENMETRICS)
    assert page.content_type.startswith("application/openmetrics-text")
    assert page.text.endswith("# EOF\n")
    assert page.number("opensips_fs_freeswitch_events_received_total") >= 5
    assert page.value("opensips_fs_build_info", version=__version__) == 1


def test_a_refused_login_shows_on_its_socket(stack, tmp_path):
    s = stack(sims=())
    sim = FsSimulator(SimSettings(password="NotThisOne")).start()
    try:
        target = f"127.0.0.1:{sim.port}"
        assert result(s.mi("fs_subscribe", {"freeswitch_url": f":WrongPw1@{target}",
                                            "events": ["DTMF"]})) == "OK"
        page = wait_until(lambda: p if (p := scrape(s.http_port)).value(
            "opensips_fs_esl_socket_login_failures_total", socket=target) else None, 10, what="login failure")
        assert page.value("opensips_fs_esl_socket_connected", socket=target) == 0
        assert page.value("opensips_fs_esl_socket_pending_events", socket=target) == 1
        assert page.number("opensips_fs_freeswitch_login_failures_total") >= 1
        assert "WrongPw1" not in page.text
    finally:
        sim.stop()


def test_destination_labels_never_hold_a_password(stack, tmp_path, rabbitmq_broker):
    s = stack(sims=(), extra='loadmodule "event_http.so"\nloadmodule "event_rabbitmq.so"\n')
    http_sink = HttpSink()
    rabbitmq_broker.ctl("add_user", "metrics_user", "RabbitPw9")
    rabbitmq_broker.ctl("set_permissions", "-p", "/", "metrics_user", ".*", ".*", ".*")
    consumer = Consumer(rabbitmq_broker)
    consumer.queue("metrics_q")
    try:
        host = f"127.0.0.1:{http_sink.port}"
        for target in (f"http://hookuser:HookPw7@{host}/hook",
                       f"rabbitmq:metrics_user:RabbitPw9@127.0.0.1:{rabbitmq_broker.port}/metrics_q"):
            assert result(s.mi("event_subscribe", {"event": "E_FREESWITCH", "socket": target})) == "OK"
        assert result(s.mi("raise_event", {"event": "E_FREESWITCH", "params": "{\"x\": \"1\"}"})) == "OK"
        assert http_sink.wait_for(1) and len(consumer.messages("metrics_q", 1)) == 1
        page = wait_until(lambda: p if (p := scrape(s.http_port)).value(
            "opensips_fs_evi_destination_sent_total", transport="rabbitmq") else None, 30, what="rabbitmq sent")
        assert page.label_values("opensips_fs_evi_destination_sent_total", "destination") == {
            f"http://{host}/hook", f"rabbitmq:metrics_user@127.0.0.1:{rabbitmq_broker.port}/metrics_q"}
        assert page.value("opensips_fs_evi_destination_sent_total", transport="http") == 1
        assert page.value("opensips_fs_evi_destination_unconfirmed", transport="rabbitmq") == 0
        assert page.value("opensips_fs_evi_destination_returned_total", transport="rabbitmq") is not None
        assert "HookPw7" not in page.text and "RabbitPw9" not in page.text
    finally:
        http_sink.close()
        consumer.close()
        rabbitmq_broker.ctl("delete_user", "metrics_user")


def test_scrapes_within_a_second_share_one_rendered_page(default_stack):
    s = default_stack(sims=())
    first = scrape(s.http_port)
    rendered = time.monotonic()
    calls = 0
    while time.monotonic() - rendered < 0.5:      # a scraper hammering the page
        result(s.mi("fs_list"))
        calls += 1
        assert scrape(s.http_port).text == first.text
    name = "opensips_fs_mi_command_requests_total"
    fs_list = {"command": "fs_list", "transport": "http", "outcome": "ok"}
    assert first.value(name, **fs_list) is None
    page = wait_until(lambda: (p := scrape(s.http_port)).text != first.text and p, 3, what="a new page")
    assert page.value(name, **fs_list) == calls
    assert scrape(s.http_port, accept=OPENMETRICS).text.endswith("# EOF\n")   # each format its own page

"""Sockets made and dropped through MI leave nothing behind: after
`fs_subscribe` to many unreachable FreeSWITCH addresses and the matching
`fs_unsubscribe`, every per-socket registry the service shows is empty again
(fs_list, fs_status, the `freeswitch:sockets` statistic, the per-socket
/metrics families) and the connection attempts stop."""

from __future__ import annotations

import socket

import pytest

from opensips_fs.esl.manager import TRIM_AFTER, backoff_gap
from support.scrape import scrape
from support.stack import result, stack_factory
from support.waits import assert_never, wait_until

pytestmark = pytest.mark.timeout(60)

SOCKETS = TRIM_AFTER + 20  # enough for the manager's hand-back after a mass drop
FRESH_PAGES = 'modparam("httpd", "metrics_max_age", 0)'


@pytest.fixture
def stack(tmp_path):
    yield from stack_factory(tmp_path)


@pytest.fixture
def refused_ports():
    holders = []
    for _ in range(SOCKETS):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        holders.append(holder)
    yield [h.getsockname()[1] for h in holders]
    for holder in holders:
        holder.close()


def freeswitch_stat(s, name: str) -> int:
    return result(s.mi("get_statistics", {"statistics": ["freeswitch:"]}))[f"freeswitch:{name}"]


def test_sockets_subscribed_then_unsubscribed_through_mi_leave_nothing(stack, refused_ports):
    s = stack(sims=[], db_rows=[], httpd_params=FRESH_PAGES)
    urls = [f":ClueCon@127.0.0.1:{port}" for port in refused_ports]
    for url in urls:
        assert result(s.mi("fs_subscribe", {"freeswitch_url": url, "events": ["DTMF", "TALK"]})) == "OK"
    assert freeswitch_stat(s, "sockets") == SOCKETS
    wait_until(lambda: freeswitch_stat(s, "connect_failures") >= SOCKETS, 10, what="every socket failed once")
    page = scrape(s.http_port)
    assert len(page.label_values("opensips_fs_esl_socket_connected", "socket")) == SOCKETS

    for url in urls:
        assert result(s.mi("fs_unsubscribe", {"freeswitch_url": url, "events": ["DTMF", "TALK"]})) == "OK"

    assert result(s.mi("fs_list")) == {"Sockets": []}
    assert freeswitch_stat(s, "sockets") == 0
    assert result(s.mi("fs_status"))["Sockets"] == []
    page = scrape(s.http_port)
    assert not [sample for sample in page.samples if sample.name.startswith("opensips_fs_esl_socket_")]
    failures = freeswitch_stat(s, "connect_failures")
    # a socket still trying would have retried within its backoff gap
    assert_never(lambda: freeswitch_stat(s, "connect_failures") != failures, during=2 * backoff_gap(1),
                 what="a dropped socket tried again")

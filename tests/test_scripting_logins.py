"""FreeSWITCH logins and credentials through MI over HTTP, against
simulators made to refuse logins: backoff and its log lines, corrected
passwords tried at once, DB credentials that end with their row, the reason
`freeswitch_esl` gives, and the cap on sockets MI may create."""

from __future__ import annotations

import logging

import gevent
import pytest

from opensips_fs.esl.socket import SocketSettings, backoff_gap
from opensips_fs.sim import SimUser
from support.stack import error, result, stack_factory, url
from support.waits import assert_never, wait_until

pytestmark = pytest.mark.timeout(40)


@pytest.fixture
def stack(tmp_path):
    yield from stack_factory(tmp_path)


def wait_for_clients(box, n: int = 1) -> None:
    with gevent.Timeout(5):
        while len(box.clients) < n:
            gevent.sleep(0.02)


def esl_records(caplog, level):
    return [r.getMessage() for r in caplog.records if r.name == "opensips_fs.esl" and r.levelno == level]


def test_a_refused_login_backs_off_and_warns_once(stack, caplog):
    s = stack()
    box = s.sims[8021]
    box.set_password("Other")
    assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8021), "events": ["DTMF"]})) == "OK"
    gevent.sleep((backoff_gap(1) + backoff_gap(2)) * 1.5)  # the fourth attempt is due at 7 s
    # attempts at about 0, 1 and 3 s — not one a second for ever
    assert 2 <= len(box.clients) <= 3, len(box.clients)
    assert all(c.commands == ["auth ClueCon"] for c in box.clients)
    warnings = esl_records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "refused the login: -ERR invalid; retrying in 1 s" in warnings[0]
    status = result(s.mi("fs_status"))["Sockets"][0]
    assert status["state"] == "backoff" and status["attempts"] == len(box.clients)


def test_a_refused_connection_logs_like_a_refused_login(stack, caplog):
    s = stack()
    assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8029), "events": ["DTMF"]})) == "OK"
    wait_until(lambda: esl_records(caplog, logging.WARNING), what="a warning")
    assert_never(lambda: len(esl_records(caplog, logging.WARNING)) > 1, during=1.5 * backoff_gap(1),
                 what="a second warning for the same failure")
    warnings = esl_records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "failed: Connection refused; retrying in 1 s" in warnings[0]


def test_a_corrected_password_is_tried_at_once_and_the_call_waits_for_it(stack, caplog):
    s = stack()
    caplog.set_level(logging.INFO, logger="opensips_fs")  # NOTICE lines too
    box = s.sims[8021]
    box.set_password("NewPass")
    assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8021), "events": ["DTMF"]})) == "OK"
    wait_for_clients(box)
    gevent.sleep(1.5)  # failing, waiting 2 s before its third attempt
    sock = s.app.manager.find("127.0.0.1", s.port_map[8021])
    assert sock.state == "backoff"
    # freeswitch_esl with the right password: no 503, the command runs
    assert result(s.mi("freeswitch_esl", ["api echo hi", url(s, 8021, ":NewPass@")])) == "hi"
    assert box.clients[-1].commands[0] == "auth NewPass"
    assert esl_records(caplog, 25) == []  # recovery is announced once the connection has lasted
    notices = wait_until(lambda: esl_records(caplog, 25), timeout=SocketSettings().stable_after * 1.5,
                         what="the recovery notice")
    assert len(notices) == 1 and "connected again after" in notices[0]


def test_fs_subscribe_with_a_corrected_password_answers_after_the_login(stack):
    s = stack()
    box = s.sims[8021]
    box.set_password("NewPass")
    assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8021), "events": ["DTMF"]})) == "OK"
    wait_for_clients(box)
    gevent.sleep(0.3)
    assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8021, ":NewPass@"),
                                        "events": ["TALK"]})) == "OK"
    sock = s.app.manager.find("127.0.0.1", s.port_map[8021])
    assert sock.connected  # the reply came once the login with the new password was done
    assert box.clients[-1].commands[0] == "auth NewPass"


def test_freeswitch_esl_says_the_login_was_refused(stack):
    s = stack()
    s.sims[8021].set_password("Other")
    assert error(s.mi("freeswitch_esl", ["api status", url(s, 8021)])) == {
        "code": 503, "message": "FreeSWITCH refused the login"}
    # an unreachable FreeSWITCH is still "not connected"
    assert error(s.mi("freeswitch_esl", ["api status", url(s, 8029)])) == {
        "code": 503, "message": "FreeSWITCH not connected"}


def test_db_credentials_end_with_their_row(stack):
    s = stack(db_rows=[{"id": 1, "username": "admin@127.0.0.1", "password": "DbPass", "ip": "127.0.0.1",
                        "port": 8021, "events_csv": "DTMF"}],
              users=[SimUser("admin@127.0.0.1", "DbPass")])
    box = s.sims[8021]
    box.set_password("DbPass")
    assert result(s.mi("fs_reload")) == "OK"
    assert result(s.mi("freeswitch_esl", ["api echo a", url(s, 8021, "")])) == "a"  # ESL-used: stays open
    s.write_db([])
    assert result(s.mi("fs_reload")) == "OK"
    sock = s.app.manager.find("127.0.0.1", s.port_map[8021])
    assert sock is not None and not sock.db_provisioned
    box.set_password("MiPass")
    assert result(s.mi("freeswitch_esl", ["api echo b", url(s, 8021, ":MiPass@")])) == "b"
    box.drop(notice=True)
    with gevent.Timeout(10):
        while not any(c.authed and c.commands[:1] == ["auth MiPass"] for c in box.clients):
            gevent.sleep(0.02)
    assert not any(c.commands[:1] == ["userauth admin@127.0.0.1:DbPass"] for c in box.clients[1:])


def test_mi_may_create_only_so_many_sockets(stack):
    s = stack(extra='modparam("freeswitch", "esl_max_sockets", 2)')
    assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8021), "events": ["DTMF"]})) == "OK"
    assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8022), "events": ["DTMF"]})) == "OK"
    before = result(s.mi("fs_list"))
    assert error(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8029), "events": ["DTMF"]})) == {
        "code": 500, "message": "Too many FreeSWITCH sockets"}
    assert error(s.mi("freeswitch_esl", ["api status", url(s, 8029)])) == {
        "code": 500, "message": "Too many FreeSWITCH sockets"}
    assert result(s.mi("fs_list")) == before and len(s.app.manager.sockets()) == 2
    # existing sockets are still served
    assert result(s.mi("freeswitch_esl", ["api echo ok", url(s, 8021)])) == "ok"
    assert result(s.mi("fs_unsubscribe", {"freeswitch_url": url(s, 8022), "events": ["DTMF"]})) == "OK"
    gevent.sleep(0.1)
    assert result(s.mi("fs_subscribe", {"freeswitch_url": url(s, 8029), "events": ["DTMF"]})) == "OK"

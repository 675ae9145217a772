"""Log lines a peer cannot blow up: long values are cut, a line that repeats
is rate-limited (a few pass, then one per window saying how many were held
back) — unit checks of `logs.bounded` / `RepeatFilter`, then a running
service fed a 900 KB event name that FreeSWITCH keeps refusing."""

import logging

import gevent
import pytest

from opensips_fs import logs
from opensips_fs.sim import FsSimulator, SimSettings
from support.ops import OpsStack, wait_until

pytestmark = pytest.mark.timeout(30)


def record(msg, *args, name="opensips_fs.esl.manager", lineno=10, level=logging.WARNING):
    return logging.LogRecord(name, level, __file__, lineno, msg, args or None, None, func="f")


def test_long_arguments_are_cut_with_their_length():
    huge = "E" * 900_000
    line = logs.OpenSipsFormatter().format(record("refused 'event json %s' (%r) %s", huge,
                                                  b"x" * 5000, ValueError("v" * 3000)))
    assert len(line) < 2000
    assert f"...[{len(huge)} chars, cut]" in line and "...[5000 bytes, cut]" in line
    assert "...[3000 chars, cut]" in line


def test_a_huge_message_is_cut_too():
    line = logs.JsonFormatter("json", hostname="h").format(record("x" * 100_000))
    assert len(line) < logs.MAX_MESSAGE_CHARS + 500 and "...[100000 chars, cut]" in line


def test_short_values_and_numbers_are_untouched():
    line = logs.OpenSipsFormatter().format(record("ESL %s: attempt %d, %r", "h:1", 3, [1, 2]))
    assert line.endswith("ESL h:1: attempt 3, [1, 2]")


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def test_repeats_pass_a_burst_then_one_per_window_with_the_count():
    clock = Clock()
    limiter = logs.RepeatFilter(burst=3, window=60, clock=clock)
    passed = [limiter.filter(record("ESL %s: down (attempt %d)", "h:1", n)) for n in range(10)]
    assert passed == [True] * 3 + [False] * 7             # attempt numbers do not make it new
    assert limiter.filter(record("ESL %s: down (attempt %d)", "h:2", 1))   # another subject
    assert limiter.filter(record("other line %s", "h:1", lineno=11))       # another call site
    clock.now += 61
    again = record("ESL %s: down (attempt %d)", "h:1", 11)
    assert limiter.filter(again)
    assert logs.OpenSipsFormatter().format(again).endswith(
        "ESL h:1: down (attempt 11) (7 similar line(s) held back)")
    assert limiter.filter(record("ESL %s: down (attempt %d)", "h:1", 12))
    assert limiter.filter(record("fatal", level=logging.CRITICAL))


def test_critical_lines_are_never_held_back():
    limiter = logs.RepeatFilter(burst=1, window=60, clock=Clock())
    assert all(limiter.filter(record("boom", level=logging.CRITICAL)) for _ in range(5))


def test_a_900kb_event_name_refused_for_ever_logs_a_few_short_lines(tmp_path):
    box = FsSimulator(SimSettings(password="ClueCon")).start()
    stack = OpsStack(tmp_path)
    try:
        name = "NOT_AN_EVENT_" + "X" * 900_000
        reply = stack.mi("fs_subscribe", {"freeswitch_url": f":ClueCon@127.0.0.1:{box.port}",
                                          "events": [name]})
        assert reply["result"] == "OK"
        wait_until(lambda: "refused" in stack.log.getvalue())
        gevent.sleep(4)                                     # retried every second meanwhile
        text = stack.log.getvalue()
        assert len(text) < 20_000, len(text)
        assert "900013 chars" in text                        # how long it was, not what
        status = stack.mi("fs_status")["result"]["Sockets"][0]
        assert status["pending"] and len(status["last_error"]) >= 900_000   # MI still has it all
    finally:
        stack.stop()
        box.stop()

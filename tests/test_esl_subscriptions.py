"""The sans-IO subscription bookkeeping of one socket, without sockets: what
goes on the wire for each change, what replies and a lost connection do,
and that the work per call follows the changes, not the number of names."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings, strategies as st

from opensips_fs.esl.subscriptions import SubState, Subscriptions, rejected_retry_gap


def wire(subs: Subscriptions, now: float = 0.0, reply: str = "+OK") -> list[str]:
    """Run the owner's loop once: take the commands, answer each with `reply`."""
    sent = []
    while batch := subs.next_commands(now):
        for sub, text in batch:
            sent.append(text)
            subs.on_reply(sub, reply, now)
    return sent


def test_reference_sums_decide_the_wire():
    subs = Subscriptions()
    assert subs.add("DTMF") is True and subs.add("DTMF") is False
    assert subs.add("TALK") is True
    assert wire(subs) == ["event json DTMF", "event json TALK"]
    assert subs.remove("DTMF") is False and wire(subs) == []  # one reference left
    assert subs.remove("DTMF") is True and wire(subs) == ["nixevent DTMF"]
    assert subs.remove("DTMF") is None  # no reference: ignored
    assert subs.names() == ["TALK"] and subs.refs("TALK") == 1 and subs.refs("DTMF") == 0
    assert len(subs) == 1  # DTMF is forgotten once its nixevent is answered


def test_first_subscribed_order_and_resend_after_a_lost_connection():
    subs = Subscriptions()
    for name in ("C", "A", "B"):
        subs.add(name)
    assert wire(subs) == ["event json C", "event json A", "event json B"]
    subs.connection_lost()
    assert subs.split() == ([], ["C", "A", "B"])
    subs.add("D")
    subs.remove("A")  # not on the wire any more: leaves without a nixevent
    assert wire(subs) == ["event json C", "event json B", "event json D"]
    assert subs.split() == (["C", "B", "D"], []) and subs.settled()


def test_refused_name_is_retried_on_schedule_and_cancelled_quietly():
    subs = Subscriptions()
    subs.add("NOPE")
    [(sub, text)] = subs.next_commands(0.0)
    outcome = subs.on_reply(sub, "-ERR no keywords supplied", 0.0)
    assert outcome is not None
    assert outcome.refused and outcome.retry_gap == 1.0 and outcome.gap_changed
    assert sub.state is SubState.PENDING and subs.settled()  # answered, refused
    assert subs.next_commands(0.5) == [] and subs.next_retry(0.5) == pytest.approx(0.5)
    for n in range(2, 13):
        [(sub, _)] = subs.next_commands(1e6 * n)
        outcome = subs.on_reply(sub, "-ERR no", 1e6 * n)
        assert outcome is not None
        assert outcome.retry_gap == rejected_retry_gap(n)
    assert outcome.retry_gap == 4.0
    assert subs.remove("NOPE") is True
    assert subs.next_retry(1e9) is None and wire(subs, 1e9) == [] and len(subs) == 0


def test_accepted_after_refusals_reports_recovery():
    subs = Subscriptions()
    subs.add("X")
    [(sub, _)] = subs.next_commands(0.0)
    subs.on_reply(sub, "-ERR later", 0.0)
    [(sub, _)] = subs.next_commands(2.0)
    outcome = subs.on_reply(sub, "+OK event listener enabled json", 2.0)
    assert outcome is not None
    assert outcome.recovered == 1 and not outcome.refused and not outcome.unexpected
    assert subs.split() == (["X"], [])


def test_changes_while_a_command_is_on_its_way():
    subs = Subscriptions()
    subs.add("A")
    [(sub, _)] = subs.next_commands(0.0)
    subs.remove("A")  # unsubscribed before FreeSWITCH answered the event json
    assert subs.next_commands(0.0) == []
    subs.on_reply(sub, "+OK", 0.0)
    assert wire(subs) == ["nixevent A"] and len(subs) == 0
    subs.add("B")
    wire(subs)
    subs.remove("B")
    [(sub, text)] = subs.next_commands(0.0)
    assert text == "nixevent B"
    subs.add("B")  # wanted again while the nixevent is on its way
    subs.on_reply(sub, "+OK", 0.0)
    assert wire(subs) == ["event json B"] and subs.split() == (["B"], [])


def test_spellings_of_one_name_share_the_wire():
    subs = Subscriptions()
    subs.add("DTMF")
    subs.add("dtmf")
    assert wire(subs) == ["event json DTMF", "event json dtmf"]
    assert subs.wants("dtmf")
    subs.remove("dtmf")  # DTMF stays: a nixevent would end both
    assert wire(subs) == [] and subs.wants("dtmf")
    subs.remove("DTMF")
    assert wire(subs) == ["nixevent DTMF"] and not subs.wants("dtmf")


def test_bad_names_are_refused_and_change_nothing():
    subs = Subscriptions()
    for bad in ("", "A\nB", "A\r"):
        with pytest.raises(ValueError):
            subs.add(bad)
    assert len(subs) == 0 and wire(subs) == []


def test_a_change_costs_the_same_with_many_names():
    """Work per call follows the changes: with 20,000 names on the wire one
    more subscription is about as cheap as with 10 (no scan of the set)."""
    def cost(n: int) -> float:
        subs = Subscriptions()
        for i in range(n):
            subs.add(f"E{i}")
        wire(subs)
        t0 = time.perf_counter()
        for i in range(2000):
            subs.add(f"N{i}")
            wire(subs)
        return time.perf_counter() - t0

    cost(10)  # warm up
    small, large = min(cost(10) for _ in range(3)), min(cost(20_000) for _ in range(3))
    assert large < small * 5, (small, large)  # the old full scan was ~2000x slower here


names = st.sampled_from(["A", "a", "B", "C", "c", "D"])
steps = st.lists(st.tuples(st.sampled_from(["add", "remove", "wire", "refuse", "lost"]), names), max_size=60)


@settings(max_examples=1000, deadline=None)
@given(steps=steps, seed=st.integers(0, 2**16))
def test_the_wire_follows_the_sums(steps, seed):
    """After any sequence, once every command is answered: exactly the names
    with references are on the wire (or refused and pending), in the sums'
    spelling groups, and nothing is left over."""
    rnd = random.Random(seed)
    subs = Subscriptions()
    expected: dict[str, int] = {}
    on_wire: set[str] = set()
    now = 0.0

    def run(reply_for):
        while batch := subs.next_commands(now):
            for sub, text in batch:
                verb, _, name = text.rpartition(" ")
                reply = reply_for(name) if verb == "event json" else "+OK"
                # FreeSWITCH keeps one subscription per name, whatever its case
                if verb == "event json" and reply.startswith("+OK"):
                    on_wire.add(name.lower())
                elif verb == "nixevent":
                    on_wire.discard(name.lower())
                subs.on_reply(sub, reply, now)

    for op, name in steps:
        now += rnd.random()
        if op == "add":
            subs.add(name)
            expected[name] = expected.get(name, 0) + 1
        elif op == "remove":
            result = subs.remove(name)
            assert (result is None) == (expected.get(name, 0) == 0)
            if result is not None:
                expected[name] -= 1
        elif op == "wire":
            run(lambda n: "+OK")
        elif op == "refuse":
            run(lambda n: "-ERR no" if n == name else "+OK")
        else:
            subs.connection_lost()
            on_wire.clear()
    now += 100.0
    run(lambda n: "+OK")
    wanted = {n for n, k in expected.items() if k > 0}
    assert set(subs.names()) == wanted
    assert subs.split()[1] == [] and subs.settled()
    for name in wanted:
        assert subs.refs(name) == expected[name]
    # every wanted spelling group is on the wire; nothing else is
    assert on_wire == {n.lower() for n in wanted}
    assert len(subs) == len(wanted)

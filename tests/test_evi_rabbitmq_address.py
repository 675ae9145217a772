"""`rabbitmq:` socket strings (evi/rabbitmq_address.py) and the publisher-confirm
ledger (evi/confirms.py): pure functions and state, no sockets.

The accepted/refused cases and printed forms are the ones recorded from
OpenSIPS 4.1 (tests/golden/opensips/evi_rabbitmq.json; the replay itself is in
test_evi_rabbitmq_golden.py), plus the nonsense we refuse on purpose."""

import pytest

from opensips_fs.evi.address import parse_socket
from opensips_fs.evi.confirms import ConfirmLedger, Verdict


def parsed(text):
    target = parse_socket(text)
    assert target is not None, text
    return target


@pytest.mark.parametrize("text, printed, fields", [
    ("rabbitmq:guest:guest@127.0.0.1:35672/q1", "rabbitmq:guest@127.0.0.1/q1",
     dict(host="127.0.0.1", port=35672, user="guest", password="guest", routing_key="q1")),
    ("rabbitmq:127.0.0.1:35672/q2", "rabbitmq:guest@127.0.0.1/q2",
     dict(user="guest", password="guest", exchange="", persistent=False)),
    ("rabbitmq:127.0.0.1:35672/exchange=ex1?rk1", "rabbitmq:guest@127.0.0.1/ex1?rk1",
     dict(exchange="ex1", routing_key="rk1")),
    ("rabbitmq:127.0.0.1:35672/exchange=ex1;persistent?rk1", "rabbitmq:guest@127.0.0.1/ex1?rk1",
     dict(exchange="ex1", persistent=True)),
    ("rabbitmq:127.0.0.1:35672/persistent;exchange=ex1?rk2", "rabbitmq:guest@127.0.0.1/ex1?rk2",
     dict(exchange="ex1", persistent=True, routing_key="rk2")),
    ("rabbitmq:bob@127.0.0.1:35672/q5", "rabbitmq:bob@127.0.0.1/q5",
     dict(user="bob", password="guest")),
    ("rabbitmq:127.0.0.1/q4", "rabbitmq:guest@127.0.0.1/q4", dict(port=5672)),
    ("rabbitmq:localhost:35672/qlh", "rabbitmq:guest@localhost/qlh", dict(host="localhost")),
    ("rabbitmq:127.0.0.1:35672/q%5F7", "rabbitmq:guest@127.0.0.1/q_7", dict(routing_key="q_7")),
    ("rabbitmq:127.0.0.1:35672/exchange=ex1?", "rabbitmq:guest@127.0.0.1/ex1?",
     dict(exchange="ex1", routing_key="")),
    ("rabbitmq:u%40x:p%3Aw@h:1/exchange=e%3Fx?a/b?c", "rabbitmq:u@x@h/e?x?a/b?c",
     dict(user="u@x", password="p:w", exchange="e?x", routing_key="a/b?c")),
    ("rabbitmq:u:p:x@h/rk", "rabbitmq:u@h/rk", dict(password="p:x", port=5672)),
    ("rabbitmq:h/tls_domain=dom?rk", "rabbitmq:guest@h/rk", dict(tls_domain="dom", port=5671)),
    ("rabbitmq:h:5672/tls_domain=dom?rk", "rabbitmq:guest@h/rk", dict(port=5672)),
])
def test_accepted_sockets(text, printed, fields):
    target = parsed(text)
    assert target.transport == "rabbitmq" and target.module == "event_rabbitmq"
    assert target.printed == printed
    for name, value in fields.items():
        assert getattr(target, name) == value, name


@pytest.mark.parametrize("text", [
    # refused by OpenSIPS too (400 in the recording)
    "rabbitmq:127.0.0.1:35672/", "rabbitmq:127.0.0.1:35672", "rabbitmq:127.0.0.1:abc/q1",
    "rabbitmq:127.0.0.1:0/q1", "rabbitmq:127.0.0.1:35672/foo=bar?q1",
    "rabbitmq:127.0.0.1:35672/exchange=?q1", "rabbitmq:127.0.0.1:35672/Persistent?q3",
    "rabbitmq:127.0.0.1:35672/?q1", "rabbitmq:127.0.0.1:35672/q1?x", "rabbitmq:",
    "rabbitmqx:127.0.0.1:35672/q1", "rabbitmq:guest:guest@127.0.0.1:35672", "rabbitmq",
    # accepted by OpenSIPS, refused here on purpose
    "rabbitmq:127.0.0.1:99999/q1", "rabbitmq:127.0.0.1:65536/q1", "rabbitmq:/q1",
    "rabbitmq:guest@/q1", "rabbitmq:guest:pw@:5672/q1",
    # ours: bad escapes, an empty port, names longer than an AMQP short string
    "rabbitmq:h/q%4", "rabbitmq:h/q%zz", "rabbitmq:h:/q1", "rabbitmq:h/exchange=e;;persistent?q",
    "rabbitmq:h/" + "k" * 256, "rabbitmq:h/exchange=" + "e" * 256 + "?k",
])
def test_refused_sockets(text):
    assert parse_socket(text) is None


def test_identity_ignores_password_persistent_and_tls_domain():
    base = parsed("rabbitmq:guest:guest@127.0.0.1:35672/q1")
    assert parsed("rabbitmq:127.0.0.1:35672/q1").match == base.match
    assert parsed("rabbitmq:guest:other@127.0.0.1:35672/q1").match == base.match
    assert parsed("rabbitmq:127.0.0.1:35672/persistent?q1").match == base.match
    for other in ("rabbitmq:localhost:35672/q1", "rabbitmq:127.0.0.1:35673/q1",
                  "rabbitmq:bob@127.0.0.1:35672/q1", "rabbitmq:127.0.0.1:35672/exchange=x?q1",
                  "rabbitmq:127.0.0.1:35672/q2"):
        assert parsed(other).match != base.match, other


def test_longest_names_are_accepted():
    target = parsed("rabbitmq:h/exchange=" + "e" * 255 + "?" + "k" * 255)
    assert len(target.exchange) == len(target.routing_key) == 255


# -- the confirm ledger ---------------------------------------------------------

def test_ledger_counts_acks_single_and_multiple():
    ledger = ConfirmLedger()
    tags = [ledger.published(b"p%d" % i, float(i)) for i in range(5)]
    assert tags == [1, 2, 3, 4, 5] and len(ledger) == 5
    assert ledger.acked(2, False).delivered == 1
    assert ledger.oldest_since() == 0.0
    settled = ledger.acked(4, True)          # 1, 3, 4 (2 already)
    assert settled.verdict is Verdict.ACKED and settled.delivered == 3
    assert ledger.oldest_since() == 4.0 and len(ledger) == 1
    assert ledger.acked(4, True).delivered == 0      # nothing twice
    assert ledger.acked(5, False).delivered == 1 and len(ledger) == 0
    assert ledger.oldest_since() is None


def test_ledger_returns_are_charged_to_the_next_acks():
    ledger = ConfirmLedger()
    for i in range(3):
        ledger.published(b"%d" % i, 0.0)
    ledger.returned()
    settled = ledger.acked(3, True)
    assert (settled.delivered, settled.returned) == (2, 1)
    ledger.published(b"9", 0.0)
    assert ledger.acked(4, False).returned == 0


def test_ledger_nack_hands_back_in_order():
    ledger = ConfirmLedger()
    for i in range(4):
        ledger.published(b"p%d" % i, 0.0)
    settled = ledger.nacked(3, True)
    assert settled.verdict is Verdict.NACKED and settled.resend == [b"p0", b"p1", b"p2"]
    assert ledger.nacked(4, False).resend == [b"p3"]


def test_ledger_after_a_lost_connection_starts_over():
    ledger = ConfirmLedger()
    for i in range(4):
        ledger.published(b"p%d" % i, 0.0)
    ledger.acked(1, False)
    ledger.returned()
    assert ledger.take_unconfirmed() == [b"p1", b"p2", b"p3"]
    assert len(ledger) == 0
    assert ledger.published(b"again", 1.0) == 1          # a new channel numbers from 1
    assert ledger.acked(1, False).returned == 0          # the old return is forgotten


def test_ledger_is_linear():
    ledger = ConfirmLedger()
    for i in range(100000):
        ledger.published(b"%d" % i, 0.0)
    assert ledger.acked(100000, True).delivered == 100000

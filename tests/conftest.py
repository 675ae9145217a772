"""pytest set-up shared by every test: gevent patches the standard library
before anything imports a socket, exactly as the `opensips-fs` entry point does.

Helpers shared by several test modules live beside it, in modules whose
names do not start with ``test_`` (pytest collects none of them): golden.py
(where the golden transcripts are: the in-repo copy under ``tests/golden/``),
mi_support.py (the MI test registry) and rabbitmq_support.py (the RabbitMQ
broker of the `rabbitmq_broker` fixture below, started once per run, and an
AMQP consumer)."""

from gevent import monkey

monkey.patch_all()

import pytest  # noqa: E402  (after the patching, as everything else)


@pytest.fixture(scope="session")
def rabbitmq_broker(tmp_path_factory):
    """One private RabbitMQ broker for the whole run (rabbitmq_support.py)."""
    import rabbitmq_support
    broker = rabbitmq_support.broker_for_tests(tmp_path_factory.mktemp("rabbitmq"))
    yield broker
    broker.close()

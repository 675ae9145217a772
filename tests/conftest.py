"""pytest set-up shared by every test: gevent patches the standard library
before anything imports a socket, exactly as the `opensips-fs` entry point does.

Helpers shared by several test modules live in the ``support`` package beside
this file (tests/support/: the golden locator, MI and ESL clients, the
service+simulator stack, DB and polling helpers, the RabbitMQ broker of the
`rabbitmq_broker` fixture below, started once per run, and an AMQP consumer);
test modules import from there, never from one another. The recordings they
replay are in tests/golden/."""

from gevent import monkey

monkey.patch_all()

import pytest  # noqa: E402  (after the patching, as everything else)


@pytest.fixture(scope="session")
def rabbitmq_broker(tmp_path_factory):
    """One private RabbitMQ broker for the whole run (tests/support/rabbitmq.py)."""
    from support import rabbitmq
    broker = rabbitmq.broker_for_tests(tmp_path_factory.mktemp("rabbitmq"))
    yield broker
    broker.close()


@pytest.fixture
def services():
    """Start opensips-fs subprocesses (tests/support/service.py); each is killed at the end."""
    from support.service import Service
    started = []

    def start(cfg, *args):
        service = Service(cfg, *args)
        started.append(service)
        return service
    yield start
    for service in started:
        service.kill()

"""The RabbitMQ tests on a host without Debian's rabbitmq-server
(tests/support/rabbitmq.py): skipped with the reason, or failed under
CI=true, where they must run."""

from __future__ import annotations

import pytest

from opensips_fs.tools import rabbitmq_broker
from support import rabbitmq


@pytest.fixture
def no_server(monkeypatch, tmp_path):
    """This host as one without the package: the server program `available()`
    looks for is not there."""
    monkeypatch.setattr(rabbitmq_broker, "SERVER", str(tmp_path / "no-rabbitmq-server"))
    assert not rabbitmq_broker.available()


def test_missing_server_skips_the_tests(no_server, monkeypatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="rabbitmq-server is not installed"):
        rabbitmq.broker_for_tests(tmp_path)


def test_missing_server_fails_them_under_ci(no_server, monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: the RabbitMQ tests must run"):
        rabbitmq.broker_for_tests(tmp_path)

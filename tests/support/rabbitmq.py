"""The RabbitMQ broker the tests run against, and a consumer for it.

`broker_for_tests(folder)` starts a private broker (opensips_fs.tools.rabbitmq_broker)
with a TLS listener too (a self-signed certificate for 127.0.0.1 made with the
openssl tool, its own CA). When Debian's rabbitmq-server is not installed the
tests that need it are skipped — except under CI=true, where they fail.

`Consumer` is a real AMQP client (pika, another library than the one
opensips-fs publishes with): it declares queues/exchanges and collects the
messages of a queue with their properties.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import gevent
import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from opensips_fs.tools.rabbitmq_broker import SERVER, Broker, available
from support.ci import in_ci


def make_cert(folder: Path) -> tuple[str, str]:
    key, cert = folder / "broker-key.pem", folder / "broker-cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    key.chmod(0o644)
    return str(cert), str(key)


def broker_for_tests(folder: Path) -> Broker:
    if not available():
        reason = f"rabbitmq-server is not installed ({SERVER}; apt-get install rabbitmq-server)"
        if in_ci():
            pytest.fail(reason + " — CI=true: the RabbitMQ tests must run", pytrace=False)
        pytest.skip(reason)
    cert, key = make_cert(folder)
    return Broker.start(folder / "state", tls=(cert, cert, key))


class Consumer:
    """A pika connection to the test broker (queues, exchanges, messages)."""

    def __init__(self, broker: Broker):
        self.broker = broker
        self.connection: pika.BlockingConnection | None = None
        self.channel: BlockingChannel | None = None

    def _ch(self) -> BlockingChannel:
        if self.connection is None or self.connection.is_closed:
            self.connection = pika.BlockingConnection(
                pika.ConnectionParameters("127.0.0.1", self.broker.port))
            self.channel = self.connection.channel()
        return self.channel

    def queue(self, name: str, exchange: str | None = None, key: str | None = None) -> str:
        ch = self._ch()
        ch.queue_declare(name, durable=True)
        ch.queue_purge(name)
        if exchange:
            ch.exchange_declare(exchange, "direct", durable=True)
            ch.queue_bind(name, exchange, routing_key=name if key is None else key)
        return name

    def delete_exchange(self, name: str) -> None:
        self._ch().exchange_delete(name)

    def _get(self, queue: str) -> tuple[Any, Any, bytes | None]:
        """One basic.get; a connection the broker dropped is opened anew."""
        try:
            return self._ch().basic_get(queue, auto_ack=True)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.ChannelWrongStateError):
            self.connection = None
            return self._ch().basic_get(queue, auto_ack=True)

    def messages(self, queue: str, count: int, timeout: float = 10.0) -> list:
        """Up to `count` messages of `queue` (waiting up to `timeout` for them),
        each (body, properties, method); acked."""
        got: list[tuple[bytes | None, Any, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            method, properties, body = self._get(queue)
            if method is None:
                gevent.sleep(0.02)
                continue
            got.append((body, properties, method))
        return got

    def drain(self, queue: str, settle: float = 0.5) -> list:
        """Every message of `queue` until none came for `settle` seconds."""
        got: list[tuple[bytes | None, Any, Any]] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < settle:
            method, properties, body = self._get(queue)
            if method is None:
                gevent.sleep(0.02)
                continue
            got.append((body, properties, method))
            quiet_since = time.monotonic()
        return got

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass    # the broker went away meanwhile

"""Helpers shared by the test modules (no tests here; pytest collects none).

* ``golden``: where the recordings are (``tests/golden/``) and loading them;
* ``mi``: the MI test registry, settings for MI servers on ephemeral
  ports, raw HTTP/FIFO exchanges;
* ``mi_clients``: the real MI clients (``opensips-cli`` one-shot and
  interactive, the ``opensips`` package) driven as child processes;
* ``esl_client``: a bare ESL client socket that reads whole frames,
  independent of the code under test;
* ``stack``: opensips-fs (``App`` from a config) with FreeSWITCH simulators
  and refused ports, driven by recorded MI requests;
* ``db``: throw-away databases on SQLite, PostgreSQL and MariaDB;
* ``waits``: polling until a condition holds;
* ``sink``: EVI subscribers (UDP, TCP, HTTP) that record what they receive;
* ``service``: opensips-fs as a subprocess (the ``services`` fixture of
  conftest.py starts them), a copy of the default config on tmp paths and
  ephemeral ports, MI over HTTP;
* ``rabbitmq``: the private RabbitMQ broker of the ``rabbitmq_broker``
  fixture and an AMQP consumer (pika);
* ``ops``: one opensips-fs in the test process as an operator meets it (MI on
  every transport, the HTTP probe routes, the log lines it writes).

Test modules import from here, never from one another.
"""

"""The real `opensips-event` CLI (python `opensips` package) against opensips-fs:
it subscribes over MI (HTTP), prints the E_FREESWITCH events raised, and its
expiry and unsubscribe behave as with OpenSIPS (docs/protocols/evi.md §5.1)."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import gevent
import pytest
from gevent import subprocess

from opensips_fs import config
from opensips_fs.app import App
from opensips_fs.config import EviTransportSettings, HttpdSettings, MiHttpSettings
from opensips_fs.evi.registry import EviRegistry
from opensips_fs.mi.registry import MiRegistry
from opensips_fs.mi.http import MiHttpServer
from opensips_fs.sim import FsSimulator, SimSettings
from opensips_fs.stats import Stats
from support.waits import wait_until

pytestmark = pytest.mark.timeout(30)

OPENSIPS_EVENT = Path(sys.executable).with_name("opensips-event")


@pytest.fixture
def service():
    stats = Stats()
    evi = EviRegistry(stats, {"event_datagram": EviTransportSettings()})
    mi = MiRegistry(stats)
    mi.register(evi.mi_commands())
    server = MiHttpServer(HttpdSettings(ip="127.0.0.1", port=0), MiHttpSettings(), mi, stats)
    server.start()
    evi.start()
    yield evi, server.address[1]
    evi.stop()
    server.stop()


def start_cli(port, *extra):
    return subprocess.Popen(
        [str(OPENSIPS_EVENT), "-t", "http", "-i", "127.0.0.1", "-p", str(port),
         "-T", "datagram", "-li", "127.0.0.1", "-lp", "0", *extra, "E_FREESWITCH"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_subscribed(evi, timeout=10.0):
    wait_until(lambda: evi.has_subscribers("E_FREESWITCH"), timeout, step=0.05,
               what="opensips-event subscribed")
    return evi.events["E_FREESWITCH"].subscribers[0]


def read_objects(text):
    decoder = json.JSONDecoder()
    objects, pos = [], 0
    text = text.strip()
    while pos < len(text):
        obj, pos = decoder.raw_decode(text, pos)
        objects.append(obj)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return objects


def test_opensips_event_prints_events_and_unsubscribes_on_sigterm(service):
    evi, port = service
    cli = start_cli(port)
    try:
        sub = wait_subscribed(evi)
        assert sub.target.printed.startswith("udp:127.0.0.1:")
        assert sub.expire == 3600
        bodies = [b'{"Event-Name":"DTMF","DTMF-Digit":"%d","Unicode":"caf\xc3\xa9"}' % i
                  for i in range(3)]
        for b in bodies:
            evi.raise_freeswitch("DTMF", "127.0.0.1", b)
        gevent.sleep(1.0)
        cli.send_signal(signal.SIGTERM)
        out, err = cli.communicate(timeout=10)
    finally:
        if cli.poll() is None:
            cli.kill()
    printed = read_objects(out.decode())
    assert printed == [{"jsonrpc": "2.0", "method": "E_FREESWITCH",
                        "params": {"name": "DTMF", "sender": "127.0.0.1",
                                   "body": b.decode()}} for b in bodies]
    assert cli.returncode == 0, err
    # it unsubscribed with expire 0: listed as expired, removed a second later
    assert sub.expire == 0
    evi.clock = lambda: time.time() + 1.5
    assert not evi.has_subscribers("E_FREESWITCH")


def test_opensips_event_expire_option(service):
    evi, port = service
    cli = start_cli(port, "-e", "2")
    try:
        sub = wait_subscribed(evi)
        assert sub.expire == 2
        out, err = cli.communicate(timeout=10)   # it unsubscribes after 2 s and exits
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, err
    assert sub.expire == 0


def test_opensips_event_prints_what_the_simulator_emits(tmp_path):
    """The whole path: opensips-fs-sim -> opensips-fs -> opensips-event."""
    sim = FsSimulator(SimSettings(host="127.0.0.1", port=0, password="ClueCon", heartbeat=0)).start()
    cfg = config.loads(f'''
log_level=1
loadmodule "freeswitch.so"
loadmodule "freeswitch_scripting.so"
modparam("freeswitch_scripting", "fs_subscribe", ":ClueCon@127.0.0.1:{sim.port}?DTMF,CHANNEL_ANSWER")
loadmodule "httpd.so"
modparam("httpd", "port", 0)
loadmodule "mi_http.so"
loadmodule "event_datagram.so"
''', str(tmp_path / "app.cfg"))
    app = App(cfg).start()
    cli = None
    try:
        port = next(int(address.rsplit(":", 1)[1])
                    for what, address, _ in app.transports if what == "MI HTTP")
        deadline = time.monotonic() + 10
        while not [c for c in sim.clients if len(c.event_list) == 2]:
            assert time.monotonic() < deadline
            gevent.sleep(0.02)
        cli = start_cli(port)
        wait_subscribed(app.evi)
        sim.raise_event("DTMF", {"DTMF-Digit": "5", "Unique-ID": "u-1"})
        sim.raise_event("CHANNEL_ANSWER", {"Unique-ID": "u-1", "Answer-State": "answered"})
        sim.raise_event("CHANNEL_HANGUP", {"Unique-ID": "u-1"})     # not subscribed
        gevent.sleep(1.0)
        cli.send_signal(signal.SIGTERM)
        out, err = cli.communicate(timeout=10)
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
        app.stop()
        sim.stop()
    printed = read_objects(out.decode())
    assert [(p["method"], p["params"]["name"], p["params"]["sender"]) for p in printed] == [
        ("E_FREESWITCH", "DTMF", "127.0.0.1"), ("E_FREESWITCH", "CHANNEL_ANSWER", "127.0.0.1")]
    bodies = [json.loads(p["params"]["body"]) for p in printed]
    assert bodies[0]["DTMF-Digit"] == "5" and bodies[1]["Answer-State"] == "answered"
    assert cli.returncode == 0, err

"""The app in-process: rooms wired in order, MI answering through them, stop
in reverse, start-up failures naming the address and leaving nothing running;
and the evi_print tool against a running app."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import gevent
import pytest

from opensips_fs import config, logs
from opensips_fs.app import App, StartupError

pytestmark = pytest.mark.timeout(20)

REPO = Path(__file__).resolve().parent.parent


def build(tmp_path, body: str) -> config.Config:
    return config.loads(body, str(tmp_path / "app.cfg"))


HTTP_ONLY = '''
loadmodule "httpd.so"
modparam("httpd", "port", 0)
loadmodule "mi_http.so"
loadmodule "event_datagram.so"
loadmodule "event_stream.so"
'''


@pytest.fixture
def running(tmp_path):
    apps = []

    def start(body: str) -> App:
        app = App(build(tmp_path, body)).start()
        apps.append(app)
        return app
    logger = logging.getLogger("opensips_fs")
    saved = logs.get_level(), logger.level
    yield start
    for app in apps:
        app.stop()
    logs.set_level(saved[0])
    logger.setLevel(saved[1])       # leave other tests' log capture as it was


def http_port(app: App) -> int:
    for what, address, _server in app.transports:
        if what == "MI HTTP":
            return int(address.rsplit(":", 1)[1])
    raise AssertionError(f"no MI HTTP listener in {app.transports}")


def mi(port: int, method: str, params=None):
    body = {"jsonrpc": "2.0", "method": method, "id": 7}
    if params is not None:
        body["params"] = params
    request = urllib.request.Request(f"http://127.0.0.1:{port}/mi",
                                     data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=5) as reply:
        answer = json.loads(reply.read())
    assert answer["id"] == 7
    return answer


# ---------------------------------------------------------------- wiring

def test_app_answers_mi_which_and_ps(running):
    app = running(HTTP_ONLY)
    port = http_port(app)
    assert port != 0
    names = mi(port, "which")["result"]
    for name in ("which", "ps", "log_level", "get_statistics", "event_subscribe"):
        assert name in names
    processes = mi(port, "ps")["result"]["Processes"]
    assert [p["Type"] for p in processes] == [
        "attendant", "event_stream Sender", f"HTTPD 127.0.0.1:{port}", "time_keeper", "timer"]
    assert [p["ID"] for p in processes] == list(range(5))
    assert {p["PID"] for p in processes} == {os.getpid()}


def test_mi_log_level_drives_the_logging_setup(running):
    app = running(HTTP_ONLY)
    port = http_port(app)
    logs.set_level(3)
    rows = mi(port, "log_level")["result"]["Processes"]
    assert {row["Log level"] for row in rows} == {3}
    assert mi(port, "log_level", [4])["result"] == {"New global log level": 4}
    assert logs.get_level() == 4
    assert mi(port, "log_level", {"level": -1})["result"] == {"New global log level": -1}
    assert logs.get_level() == -1


def test_mi_log_level_out_of_range_is_refused(running):
    """OpenSIPS's levels are -3 (alert) .. 4 (debug): anything else is an
    Invalid params error and leaves the level as it was."""
    app = running(HTTP_ONLY)
    port = http_port(app)
    logs.set_level(3)
    refused = {"code": -32602, "message": "Invalid params", "data": "Log level out of range (-3..4)"}
    for params in ([5], [-4], {"level": 100}, [2147483647], [-2147483648], [5, os.getpid()]):
        assert mi(port, "log_level", params)["error"] == refused
        assert logs.get_level() == 3
    assert mi(port, "log_level", [-3])["result"] == {"New global log level": -3}
    assert mi(port, "log_level", [4, os.getpid()])["result"] == {"Log level": 4}
    assert logs.get_level() == 4


def test_mi_kill_asks_the_owner_to_stop(running):
    app = running(HTTP_ONLY)
    assert not app.shutdown_requested.is_set()
    assert mi(http_port(app), "kill")["result"] == "OK"
    assert app.shutdown_requested.wait(timeout=3)


def test_stop_closes_the_listeners_and_is_idempotent(running):
    app = running(HTTP_ONLY)
    port = http_port(app)
    mi(port, "which")
    app.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    app.stop()
    assert app.transports == []


def test_rooms_start_in_order_and_stop_in_reverse(tmp_path, running):
    body = HTTP_ONLY + '''
loadmodule "freeswitch.so"
loadmodule "freeswitch_scripting.so"
'''
    app = running(body)
    order = [what for what, _room in app._running]
    expected = ["ESL connection manager", "event interface", "freeswitch_scripting"]
    present = [what for what in expected if what in order]
    assert order[:len(present)] == present
    assert order[len(present):] == [f"MI HTTP on 127.0.0.1:{http_port(app)}"]

    stopped = []
    for what, room in app._running:
        original = room.stop

        def recording_stop(*args, _what=what, _original=original, **kwargs):
            stopped.append(_what)
            return _original(*args, **kwargs)
        room.stop = recording_stop
    app.stop()
    assert stopped == list(reversed(order))


def test_app_without_modules_starts_and_stops(tmp_path):
    app = App(build(tmp_path, "log_level=3\n")).start()
    assert app.transports == [] and app.manager is None and app.scripting is None
    app.stop()


# ---------------------------------------------------------------- start-up failures

def test_http_port_in_use_is_a_startup_error_naming_it(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        app = App(build(tmp_path, HTTP_ONLY.replace('"port", 0', f'"port", {port}')))
        with pytest.raises(StartupError) as info:
            app.start()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "in use" in str(info.value)
    assert app._running == [] and app.transports == []


def test_failure_after_a_listener_started_stops_that_listener(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        udp_port = busy.getsockname()[1]
        app = App(build(tmp_path, HTTP_ONLY + f'''
loadmodule "mi_datagram.so"
modparam("mi_datagram", "socket_name", "udp:127.0.0.1:{udp_port}")
'''))
        with pytest.raises(StartupError) as info:
            app.start()
    assert f"127.0.0.1:{udp_port}" in str(info.value)
    assert app._running == []


def test_fifo_in_missing_folder_is_a_startup_error_naming_the_path(tmp_path):
    fifo = tmp_path / "missing" / "fifo"
    app = App(build(tmp_path, f'''
loadmodule "mi_fifo.so"
modparam("mi_fifo", "fifo_name", "{fifo}")
modparam("mi_fifo", "reply_dir", "{tmp_path}/")
'''))
    with pytest.raises(StartupError) as info:
        app.start()
    assert str(fifo) in str(info.value)


# ---------------------------------------------------------------- evi_print

def test_evi_print_subscribes_prints_and_unsubscribes(running):
    app = running(HTTP_ONLY)
    port = http_port(app)
    printer = subprocess.Popen(
        [sys.executable, "-m", "opensips_fs.tools.evi_print", "udp:127.0.0.1:0",
         "--mi", f"http://127.0.0.1:{port}/mi", "--wait", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 10
        subscribers: list = []
        while time.monotonic() < deadline and not subscribers:
            gevent.sleep(0.05)
            events = mi(port, "subscribers_list")["result"]["Events"]
            subscribers = [s for e in events if e["name"] == "E_FREESWITCH"
                           for s in e["Subscribers"]]
        assert subscribers and subscribers[0]["socket"].startswith("udp:127.0.0.1:")
        params = json.dumps({"name": "CHANNEL_ANSWER", "sender": "10.0.0.7", "body": json.dumps(
            {"Event-Name": "CHANNEL_ANSWER", "Unique-ID": "u-1",
             "Caller-Caller-ID-Number": "1001"})})
        assert mi(port, "raise_event", {"event": "E_FREESWITCH", "params": params})[
            "result"] == "OK"
        gevent.sleep(0.3)
        printer.send_signal(signal.SIGINT)
        out, err = printer.communicate(timeout=10)
    finally:
        if printer.poll() is None:
            printer.kill()
            printer.communicate()
    assert printer.returncode == 0, err
    assert "E_FREESWITCH CHANNEL_ANSWER from 10.0.0.7 Unique-ID=u-1 " \
           "Caller-Caller-ID-Number=1001" in out
    events = mi(port, "subscribers_list")["result"]["Events"]
    left = [s for e in events if e["name"] == "E_FREESWITCH" for s in e["Subscribers"]]
    assert all(s["ttl"] == "expired" or s["expire"] == 0 for s in left)


def test_evi_print_describes_datagrams():
    from opensips_fs.tools.evi_print import describe
    line = describe(b'{"jsonrpc":"2.0","method":"E_FREESWITCH","params":{"name":"DTMF",'
                    b'"sender":"127.0.0.1","body":"{\\"Event-Name\\":\\"DTMF\\",'
                    b'\\"DTMF-Digit\\":\\"5\\"}"}}', raw=False)
    assert line.endswith(" E_FREESWITCH DTMF from 127.0.0.1 DTMF-Digit=5")
    assert describe(b'{"jsonrpc":"2.0","method":"E_OTHER"}', raw=False).endswith(" E_OTHER {}")
    assert "(not a JSON-RPC notification) junk" in describe(b"junk", raw=False)
    assert describe(b"junk", raw=True).endswith(" junk")


@pytest.mark.parametrize("address, host_port", [
    ("udp:127.0.0.1:9", ("127.0.0.1", 9)),
    ("udp:[::1]:9", ("::1", 9)),            # commit bcba2ad: the brackets are not the host
    ("udp:::1:9", ("::1", 9)),
])
def test_evi_print_parses_udp_addresses(address, host_port):
    from opensips_fs.tools.evi_print import parse_udp
    assert parse_udp(address) == host_port
    assert config.split_udp(address) == host_port


@pytest.mark.parametrize("address", ["udp:[]:9", "udp:127.0.0.1", "udp:h:65536", "tcp:h:9", "udp::9"])
def test_evi_print_refuses_bad_udp_addresses(address):
    import argparse
    from opensips_fs.tools.evi_print import parse_udp
    with pytest.raises(argparse.ArgumentTypeError, match="expected udp:HOST:PORT"):
        parse_udp(address)


# ---------------------------------------------------------------- demo

def test_demo_plan_follows_the_demo_config():
    from opensips_fs.tools import demo
    steps = demo.plan(str(REPO / "etc" / "demo.cfg"), 3.0, "udp:127.0.0.1:19500", False)
    assert [name for name, _argv, _ready in steps] == ["simulator", "opensips-fs", "evi_print"]
    sim_argv = steps[0][1]
    assert sim_argv[sim_argv.index("--listen") + 1] == "127.0.0.1:18021"
    assert sim_argv[sim_argv.index("--password") + 1] == "ClueCon"
    assert sim_argv[sim_argv.index("--calls-per-second") + 1] == "3.0"
    assert steps[0][2] == ("127.0.0.1", 18021)
    assert steps[1][1][-4:] == ["-f", str(REPO / "etc" / "demo.cfg"), "-l", "notice"]
    assert steps[1][2] == ("127.0.0.1", 18888)
    assert steps[2][1][-3:] == ["udp:127.0.0.1:19500", "--mi", "http://127.0.0.1:18888/mi"]


def test_demo_refuses_a_config_without_fs_subscribe(tmp_path):
    from opensips_fs.tools import demo
    cfg = tmp_path / "nosub.cfg"
    cfg.write_text('loadmodule "httpd.so"\nloadmodule "mi_http.so"\n')
    with pytest.raises(SystemExit) as info:
        demo.plan(str(cfg), 1.0, "udp:127.0.0.1:0", False)
    assert "fs_subscribe" in str(info.value)


def _reserved_port() -> socket.socket:
    """Holds an ephemeral TCP port, not listening, for the demo subprocess to
    bind alongside (its listeners set SO_REUSEADDR): unlike a port bound then
    released, nothing else on the machine can be handed it meanwhile."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    return holder


@pytest.mark.timeout(40)
def test_demo_shows_call_events_and_stops_on_ctrl_c(tmp_path):
    with _reserved_port() as sim_holder, _reserved_port() as http_holder:
        _run_demo(tmp_path, sim_holder.getsockname()[1], http_holder.getsockname()[1])


def _run_demo(tmp_path, sim_port, http_port):
    text = (REPO / "etc" / "demo.cfg").read_text()
    text = text.replace("127.0.0.1:18021", f"127.0.0.1:{sim_port}")
    text = text.replace('"port", 18888', f'"port", {http_port}')
    cfg = tmp_path / "demo.cfg"
    cfg.write_text(text)
    out_path, err_path = tmp_path / "demo.out", tmp_path / "demo.err"
    with open(out_path, "w") as out, open(err_path, "w") as errors:
        demo = subprocess.Popen(
            [sys.executable, "-m", "opensips_fs.tools.demo", "--config", str(cfg),
             "--calls-per-second", "20", "--evi", "udp:127.0.0.1:0"],
            stdout=out, stderr=errors, cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and demo.poll() is None:
            if " E_FREESWITCH CHANNEL_" in out_path.read_text():
                break
            time.sleep(0.1)
        demo.send_signal(signal.SIGINT)
        demo.wait(20)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    out_lines, err = out_path.read_text().splitlines(), err_path.read_text()
    events = [line for line in out_lines if " E_FREESWITCH " in line]
    assert events, f"no event printed\nstdout: {out_lines}\nstderr: {err}"
    assert "from 127.0.0.1 Unique-ID=" in events[0]
    assert demo.returncode == 0, err
    assert "demo: stopped" in err and "opensips-fs stopped" in err

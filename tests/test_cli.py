"""The `opensips-fs` command as a user runs it: exit codes, config check,
start, clean stop on SIGTERM/SIGINT, start-up failures naming the address."""

import json
import signal
import socket
import time

import gevent
import pytest

from opensips_fs import __version__
from support.service import DEFAULT_CFG, make_config, mi_http, opensips_fs, reserved_port
from support.sink import TcpSink

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------- exit codes

def test_version():
    result = opensips_fs("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"opensips-fs {__version__}"
    assert opensips_fs("-V").stdout.strip() == f"opensips-fs {__version__}"


def test_check_good_config_exits_0(tmp_path):
    cfg = make_config(tmp_path)
    result = opensips_fs("-c", "-f", cfg)
    assert result.returncode == 0, result.stderr
    assert "config file ok" in result.stderr


def test_check_default_config_exits_0():
    result = opensips_fs("-c", "-f", DEFAULT_CFG)
    assert result.returncode == 0, result.stderr


def test_check_bad_config_exits_1_with_file_line(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text('loadmodule "httpd.so"\n\nmodparam("httpd", "port", "eighty")\n')
    result = opensips_fs("-c", "-f", cfg)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{cfg}:3: ")
    assert "expects an integer" in result.stderr
    assert result.stdout == ""


def test_check_missing_file_exits_1(tmp_path):
    result = opensips_fs("-c", "-f", tmp_path / "none.cfg")
    assert result.returncode == 1
    assert f"{tmp_path / 'none.cfg'}: cannot read config file" in result.stderr


def test_run_with_bad_config_exits_1_without_starting(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text('loadmodule "sl.so"\n')
    result = opensips_fs("-f", cfg)
    assert result.returncode == 1
    assert f'{cfg}:1: unknown module "sl"' in result.stderr


def test_bad_log_level_option_is_a_usage_error(tmp_path):
    result = opensips_fs("-c", "-l", "loud", "-f", make_config(tmp_path))
    assert result.returncode == 2
    assert "bad log level 'loud'" in result.stderr


def test_missing_config_option_is_a_usage_error():
    result = opensips_fs("-c")
    assert result.returncode == 2
    assert "-f" in result.stderr


def test_check_logs_ignored_module_notes(tmp_path):
    cfg = tmp_path / "frag.cfg"
    cfg.write_text('loadmodule "db_mysql.so"\nloadmodule "proto_udp.so"\n')
    result = opensips_fs("-c", "-f", cfg)
    assert result.returncode == 0
    note = [line for line in result.stderr.splitlines() if "db_mysql" in line]
    assert len(note) == 1 and "NOTICE:core:" in note[0]
    assert note[0].endswith(f'{cfg}:1: loadmodule "db_mysql.so" ignored: '
                            "the db_url scheme picks the SQL driver")
    assert f"{cfg}:2: " in result.stderr


# ---------------------------------------------------------------- start / stop

def test_minimal_config_starts_and_stops_on_sigterm(tmp_path, services):
    cfg = tmp_path / "empty.cfg"
    cfg.write_text("log_level=3\n")
    service = services(cfg)
    service.wait_for("started")
    assert service.stop(signal.SIGTERM) == 0
    assert "SIGTERM received, stopping" in service.log
    assert "opensips-fs stopped" in service.log


def wait_for_port(port, service, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            assert service.proc.poll() is None, service.log
            time.sleep(0.05)
    raise AssertionError(f"port {port} never opened:\n{service.log}")


def test_log_level_option_overrides_config(tmp_path, services):
    with reserved_port() as holder:
        port = holder.getsockname()[1]
        cfg = tmp_path / "quiet.cfg"
        cfg.write_text(f'log_level=-1\nloadmodule "httpd.so"\nloadmodule "mi_http.so"\n'
                       f'modparam("httpd", "port", {port})\n')
        service = services(cfg, "-l", "info")
        service.wait_for("INFO:core:_start: starting opensips-fs")
        service.wait_for("started")
        assert service.stop(signal.SIGINT) == 0
        assert "SIGINT received" in service.log
        quiet = services(cfg)
        wait_for_port(port, quiet)
        assert quiet.stop() == 0
        assert quiet.log == ""     # errors only: a clean run prints nothing


def test_sigterm_during_start_up_still_exits_0(tmp_path, services):
    cfg = tmp_path / "early.cfg"
    cfg.write_text("log_level=3\n")
    service = services(cfg)
    service.wait_for("starting opensips-fs")   # the handlers are in place before this line
    assert service.stop(signal.SIGTERM) == 0


def test_default_config_copy_answers_mi_and_stops_cleanly(tmp_path, services):
    with reserved_port() as holder:
        port = holder.getsockname()[1]
        service = services(make_config(tmp_path, http_port=port))
        service.wait_for("started")
        reply = mi_http(port, "which")
        assert reply["jsonrpc"] == "2.0" and reply["id"] == 1
        assert "which" in reply["result"]
        if "fs_list" in reply["result"]:
            assert mi_http(port, "fs_list")["result"] == {"Sockets": []}
        assert service.stop(signal.SIGTERM) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        assert "Traceback" not in service.log


def test_http_port_in_use_exits_1_naming_the_address(tmp_path, services):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        service = services(make_config(tmp_path, http_port=port))
        assert service.proc.wait(15) == 1
    assert f"127.0.0.1:{port}" in service.log
    assert "ERROR" in service.log
    assert "Traceback" not in service.log


def test_unwritable_fifo_path_exits_1_naming_the_path(tmp_path, services):
    cfg = make_config(tmp_path)
    fifo = tmp_path / "no" / "such" / "dir" / "fifo"
    cfg.write_text(cfg.read_text().replace(f'"{tmp_path}/fifo"', f'"{fifo}"'))
    service = services(cfg)
    assert service.proc.wait(15) == 1
    assert str(fifo) in service.log
    assert "Traceback" not in service.log


def test_sigterm_gives_queued_events_time_to_drain(tmp_path, services):
    """Issue 11: SIGTERM dropped every queued notification at once. Now a
    subscriber that comes back within the drain_timeout (3 s by default)
    gets them all."""
    sink = TcpSink()
    sink.pause()
    with reserved_port() as holder:
        port = holder.getsockname()[1]
        cfg = make_config(tmp_path, http_port=port)
        service = services(cfg)
        wait_for_port(port, service)
    try:
        assert mi_http(port, "event_subscribe", ["E_FREESWITCH", sink.socket])["result"] == "OK"
        for i in range(20):
            mi_http(port, "raise_event", ["E_FREESWITCH", json.dumps({"n": i})])
        gevent.sleep(0.3)                      # the sender has found the subscriber away
        gevent.spawn_later(1.0, sink.resume)
        service.proc.send_signal(signal.SIGTERM)
        while service.proc.poll() is None:
            gevent.sleep(0.05)
        assert service.proc.returncode == 0
        assert sink.wait_for(20, timeout=1)
        assert [d["params"]["n"] for d in sink.documents()] == list(range(20))
    finally:
        sink.close()

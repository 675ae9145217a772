"""Start-up that fails fast or heals, as an operator meets it: `-c` checks
the DB driver and the SQLite folder, a database that comes up late is loaded
when it does, a FIFO another process serves is never stolen (nor removed at
stop once replaced), SIGHUP reloads the table."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import gevent
import pytest
from gevent.server import StreamServer

from support.db import EngineDb, standard_db
from support.scrape import scrape
from support.service import REPO, make_config, mi_http, reserved_port
from support.waits import wait_until

pytestmark = pytest.mark.timeout(60)


def check(cfg, *python_first):
    """`opensips-fs -c -f cfg` in a fresh interpreter, after `python_first`."""
    code = ";".join([*python_first, "from opensips_fs.cli import main",
                     f"raise SystemExit(main(['-c', '-f', {str(cfg)!r}]))"])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, cwd=REPO)


def scripting_cfg(tmp_path, db_url, extra=""):
    cfg = tmp_path / "fs.cfg"
    cfg.write_text('loadmodule "freeswitch.so"\nloadmodule "freeswitch_scripting.so"\n'
                   f'modparam("freeswitch_scripting", "db_url", "{db_url}")\n' + extra)
    return cfg


# ----------------------------------------------------------------- opensips-fs -c

@pytest.mark.parametrize("engine,module,extra", [("mysql", "pymysql", "mysql"),
                                                 ("postgres", "psycopg2", "postgres")])
def test_check_names_the_extra_when_the_driver_is_missing(tmp_path, engine, module, extra):
    cfg = scripting_cfg(tmp_path, f"{engine}://u:Secr3tPw@127.0.0.1/db")
    assert check(cfg).returncode == 0                       # installed here: fine
    # the interpreter as it is without the driver: importing it fails
    done = check(cfg, f"sys = __import__('sys'); sys.modules[{module!r}] = None; "
                      "sys.modules['MySQLdb'] = None")
    assert done.returncode == 1
    assert f"pip install 'opensips-fs[{extra}]'" in done.stderr
    assert str(cfg) in done.stderr and module in done.stderr
    assert "Secr3tPw" not in done.stderr


def test_check_refuses_an_sqlite_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "plain-file").write_text("")
    cfg = scripting_cfg(tmp_path, "sqlite://plain-file/sub/fs.sqlite")
    done = check(cfg)
    assert done.returncode == 1
    assert f"{tmp_path}/plain-file is not a folder" in done.stderr
    (tmp_path / "a-folder").mkdir()
    cfg = scripting_cfg(tmp_path, "sqlite://a-folder")
    done = check(cfg)
    assert done.returncode == 1 and "is a folder, not a database file" in done.stderr


def test_check_accepts_an_sqlite_folder_to_be_created(tmp_path):
    cfg = scripting_cfg(tmp_path, "sqlite://new/deeper/fs.sqlite")
    done = check(cfg)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "new").exists()                 # -c creates nothing


def test_run_refuses_to_start_without_the_driver(tmp_path):
    cfg = scripting_cfg(tmp_path, "mysql://u:p@127.0.0.1/db")
    code = ("import sys; sys.modules['pymysql'] = None; sys.modules['MySQLdb'] = None; "
            "from opensips_fs.cli import main; "
            f"raise SystemExit(main(['-f', {str(cfg)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, cwd=REPO)
    assert done.returncode == 1
    assert "pip install 'opensips-fs[mysql]'" in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------- a database up late

class Forwarder:
    """A TCP proxy on `port` to the real database server (started late)."""

    def __init__(self, port, target):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(16)
        self.target = target
        self.server = StreamServer(listener, self.serve)
        self.server.start()

    def serve(self, client, _address):
        upstream = socket.create_connection(self.target, timeout=5)

        def pump(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (src, dst):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        gevent.joinall([gevent.spawn(pump, client, upstream), gevent.spawn(pump, upstream, client)])
        client.close()
        upstream.close()

    def stop(self):
        self.server.stop()


def test_database_up_late_is_loaded_when_it_comes(tmp_path, services):
    db = EngineDb("postgres", tmp_path)
    try:
        standard_db(db)
        holder = reserved_port()            # nothing listens there yet: connections refused
        late_port = holder.getsockname()[1]
        base = db.url.rsplit("@", 1)[0]
        late_url = f"{base}@127.0.0.1:{late_port}/{db.name}"
        http = reserved_port()
        http_port = http.getsockname()[1]
        cfg = make_config(tmp_path, http_port=http_port)
        cfg.write_text(cfg.read_text().replace('"sqlite://fs.sqlite"', f'"{late_url}"')
                       + 'modparam("freeswitch_scripting", "fs_subscribe", '
                         '":pw@127.0.0.1:18099?HEARTBEAT")\n')
        service = services(cfg)
        service.wait_for("opensips-fs ")
        service.wait_for("started")
        status = mi_http(http_port, "fs_status")["result"]["Database"]
        assert status["loaded"] is False and status["last_error"]
        assert status["url"].endswith(f"127.0.0.1:{late_port}/{db.name}")
        assert "opensipsrw" not in json.dumps(status)
        assert [s["if"] for s in mi_http(http_port, "fs_list")["result"]["Sockets"]] == [
            "127.0.0.1:18099"]                              # the modparam, already there
        metrics = scrape(http_port)
        assert metrics.value("opensips_fs_freeswitch_scripting_db_loaded") == 0
        assert metrics.number("opensips_fs_freeswitch_scripting_db_reload_failures_total") >= 1
        assert "initial load of table freeswitch failed" in service.log
        assert "opensipsrw" not in service.log

        forwarder = Forwarder(late_port, (db.base.host, db.base.port or 5432))
        try:
            service.wait_for("table freeswitch loaded after", timeout=20)
            status = mi_http(http_port, "fs_status")["result"]["Database"]
            assert status["loaded"] is True and status["last_error"] is None
            assert status["start_attempts"] >= 2 and status["last_load"] <= time.time()
            # the DB rows below the modparam, as with the database up at start
            assert [s["if"] for s in mi_http(http_port, "fs_list")["result"]["Sockets"]] == [
                "127.0.0.1:18099", "localhost:8021", "127.0.0.1:8021", "127.0.0.1:8022"]
            # a page is served again for up to 1 s (metrics_max_age): wait for a new one
            metrics = wait_until(lambda: (page := scrape(http_port)).value(
                "opensips_fs_freeswitch_scripting_db_loaded") == 1 and page, 5, what="a page with db_loaded 1")
            assert metrics.value("opensips_fs_freeswitch_scripting_db_last_load_timestamp_seconds") == \
                pytest.approx(status["last_load"])
            assert service.stop() == 0
        finally:
            forwarder.stop()
            holder.close()
            http.close()
    finally:
        db.close()


# ------------------------------------------------------------------- the FIFO

def test_a_second_service_on_the_same_fifo_refuses_to_start(tmp_path, services):
    first = services(make_config(tmp_path))
    first.wait_for("started")
    fifo = tmp_path / "fifo"
    inode = os.stat(fifo).st_ino
    other = tmp_path / "other"
    other.mkdir()
    second_cfg = make_config(other)
    second_cfg.write_text(second_cfg.read_text().replace(f'"{other}/fifo"', f'"{fifo}"'))
    second = services(second_cfg)
    assert second.proc.wait(15) == 1
    assert f"FIFO {fifo} is already served by another process" in second.log
    assert "Traceback" not in second.log
    assert os.stat(fifo).st_ino == inode                  # not replaced
    cli_cfg = tmp_path / "cli.cfg"
    cli_cfg.write_text(f"[default]\nlog_level: WARNING\ncommunication_type: fifo\n"
                       f"fifo_file: {fifo}\nfifo_file_fallback: {fifo}\n"
                       f"fifo_reply_dir: {tmp_path}\n")
    reply = subprocess.run([str(Path(sys.executable).parent / "opensips-cli"), "-f", str(cli_cfg),
                            "-x", "mi", "uptime"], capture_output=True, text=True, timeout=20,
                           env=dict(os.environ, HOME=str(tmp_path)))
    assert "Up since" in reply.stdout, reply.stderr        # the first one still answers
    assert first.stop() == 0
    assert not fifo.exists()                                # ours: removed


def test_a_stale_fifo_is_replaced(tmp_path, services):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)                                         # nobody reads it
    service = services(make_config(tmp_path))
    service.wait_for("started")
    assert service.stop() == 0 and not fifo.exists()


def test_stop_leaves_a_fifo_that_replaced_ours(tmp_path, services):
    service = services(make_config(tmp_path))
    service.wait_for("started")
    fifo = tmp_path / "fifo"
    os.unlink(fifo)
    os.mkfifo(fifo)                                         # someone else's now
    assert service.stop() == 0
    assert fifo.exists() and "was replaced by another file" in service.log


# -------------------------------------------------------------------- SIGHUP

def test_sighup_reloads_the_table(tmp_path, services):
    http = reserved_port()
    port = http.getsockname()[1]
    try:
        service = services(make_config(tmp_path, http_port=port))
        service.wait_for("started")
        assert mi_http(port, "fs_list")["result"] == {"Sockets": []}
        with sqlite3.connect(tmp_path / "fs.sqlite") as conn:
            conn.execute("INSERT INTO freeswitch (password, ip, port, events_csv) "
                         "VALUES ('pw', '127.0.0.1', 18098, 'DTMF')")
        service.proc.send_signal(signal.SIGHUP)
        service.wait_for("loaded 1 socket subscription(s)")
        assert "SIGHUP: reloading the freeswitch table" in service.log
        assert mi_http(port, "fs_list")["result"] == {
            "Sockets": [{"if": "127.0.0.1:18098", "Events": ["DTMF"]}]}
        assert service.proc.poll() is None                  # SIGHUP does not stop it
        assert service.stop() == 0
    finally:
        http.close()


def test_unit_file_reloads_with_sighup():
    unit = (REPO / "etc" / "opensips-fs.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit

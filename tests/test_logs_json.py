"""JSON log lines (`stderror_log_format` / `syslog_log_format` = json,
json_cee): the recorded OpenSIPS lines are rebuilt byte for byte, escaping
follows OpenSIPS's, the config accepts the parameters, and a running
opensips-fs writes them on stderr and to a syslog socket."""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.golden import golden_dir
from opensips_fs import config as cfgmod
from opensips_fs import logs

pytestmark = pytest.mark.timeout(20)

REPO = Path(__file__).resolve().parent.parent
JSON_KEYS = ["time", "pid", "level", "module", "function", "message"]
CEE_KEYS = ["time", "proc", "pri", "subsys", "native", "msg", "pname", "hostname"]
LEVELS = {"ALERT": logs.ALERT, "CRITICAL": logging.CRITICAL, "ERROR": logging.ERROR,
          "WARNING": logging.WARNING, "NOTICE": logs.NOTICE, "INFO": logging.INFO,
          "DBG": logging.DEBUG}
LOGGERS = ["opensips_fs", "opensips_fs.esl", "opensips_fs.scripting", "opensips_fs.mi.http",
           "opensips_fs.mi.fifo", "opensips_fs.mi.datagram", "opensips_fs.evi.datagram",
           "opensips_fs.evi.stream", "opensips_fs.evi.xmlrpc", "opensips_fs.evi.http"]


def recorded(name):
    path = golden_dir("opensips") / "logs" / name
    return [line for line in path.read_text().splitlines() if line.startswith("{")]


def logger_for(module):
    names = [n for n in LOGGERS if logs.module_of(n) == module]
    assert names, f"no opensips-fs room logs as module {module!r}"
    return names[0]


def record_like(when, pid, level, module, function, message):
    """A LogRecord that should format to the recorded line."""
    created = time.mktime(time.strptime(f"2026 {when}", "%Y %b %d %H:%M:%S"))
    record = logging.LogRecord(logger_for(module), LEVELS[level], __file__, 1, message,
                               None, None, func=function)
    record.created = created
    record.process = pid
    return record


@pytest.mark.parametrize("line", recorded("stderror_log_format_json.log"))
def test_json_lines_are_opensips_bytes(line):
    fields = json.loads(line)
    assert list(fields) == JSON_KEYS
    assert fields["message"].endswith("\n")
    record = record_like(fields["time"], fields["pid"], fields["level"], fields["module"],
                         fields["function"], fields["message"][:-1])
    assert logs.JsonFormatter("json", hostname="vm").format(record) == line


@pytest.mark.parametrize("line", recorded("stderror_log_format_json_cee.log"))
def test_json_cee_lines_are_opensips_bytes(line):
    fields = json.loads(line)
    assert list(fields) == CEE_KEYS
    record = record_like(fields["time"], int(fields["proc"]["id"]), fields["pri"],
                         fields["subsys"], fields["native"]["function"], fields["msg"][:-1])
    formatter = logs.JsonFormatter("json_cee", hostname=fields["hostname"],
                                   pname=fields["pname"])
    assert formatter.format(record) == line


def test_escaping_is_opensips_s():
    text = 'q" b\\ t\t n\n r\r bs\b ff\f c\x01 esc\x1b del\x7f é €'
    assert logs.json_escape(text) == (
        'q\\" b\\\\ t\\t n\\n r\\r bs\\b ff\\f c\\u0001 esc\\u001b del\x7f é €')
    record = logging.LogRecord("opensips_fs.esl", logging.WARNING, __file__, 1, "%s", (text,),
                               None, func="f")
    line = logs.JsonFormatter("json", hostname="h").format(record)
    assert "\n" not in line
    assert json.loads(line)["message"] == text + "\n"


def test_level_names_and_default_pname():
    record = logging.LogRecord("opensips_fs.mi.fifo", logging.WARNING, __file__, 1, "x",
                               None, None, func="run")
    fields = json.loads(logs.JsonFormatter("json_cee", hostname="h").format(record))
    assert (fields["pri"], fields["subsys"], fields["native"], fields["pname"]) == (
        "WARNING", "mi_fifo", {"function": "run"}, "opensips-fs")
    record.levelno = logging.DEBUG
    assert json.loads(logs.JsonFormatter("json", hostname="h").format(record))["level"] == "DBG"


def test_passwords_are_masked_and_exceptions_kept():
    logs.register_secret("S3cretPassw0rd")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("opensips_fs", logging.ERROR, __file__, 1,
                                   "url fs://u:S3cretPassw0rd@10.0.0.1:8021 and %s",
                                   ("S3cretPassw0rd",), sys.exc_info(), func="f")
    line = logs.JsonFormatter("json", hostname="h").format(record)
    assert "S3cretPassw0rd" not in line
    message = json.loads(line)["message"]
    assert ":***@10.0.0.1" in message and "ValueError: boom" in message


def test_config_accepts_the_core_parameters(tmp_path):
    cfg = cfgmod.loads('stderror_log_format="json"\nsyslog_log_format = json_cee;\n',
                       str(tmp_path / "a.cfg"))
    assert (cfg.stderror_log_format, cfg.syslog_log_format) == ("json", "json_cee")
    default = cfgmod.loads("", str(tmp_path / "b.cfg"))
    assert (default.stderror_log_format, default.syslog_log_format) == ("plain_text", "plain_text")


def test_config_refuses_an_unknown_format(tmp_path):
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.loads('log_level=3\nstderror_log_format="xml"\n', str(tmp_path / "c.cfg"))
    assert str(err.value) == (f"{tmp_path / 'c.cfg'}:2: bad stderror_log_format '\"xml\"': "
                              "expected 'plain_text', 'json', 'json_cee'")


def test_running_service_writes_json_cee_on_stderr(tmp_path):
    cfg = tmp_path / "fs.cfg"
    cfg.write_text('log_level=3\nstderror_log_format="json_cee"\n'
                   'loadmodule "httpd.so"\nloadmodule "mi_http.so"\n'
                   'modparam("httpd", "port", 0)\n')
    log_path = tmp_path / "stderr.log"
    with open(log_path, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "opensips_fs", "-f", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO)
    try:
        deadline = time.monotonic() + 15
        while b"started" not in log_path.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.terminate()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = log_path.read_text().splitlines()
    assert proc.returncode == 0 and len(lines) >= 3
    for line in lines:
        fields = json.loads(line)
        assert list(fields) == CEE_KEYS
        assert fields["proc"] == {"id": str(proc.pid)} and fields["msg"].endswith("\n")
    assert any(json.loads(line)["msg"].startswith("opensips-fs ") and
               json.loads(line)["pri"] == "NOTICE" for line in lines)


@pytest.fixture
def restore_logging():
    logger = logging.getLogger("opensips_fs")
    saved = (list(logger.handlers), logger.propagate, logger.level, logs.get_level())
    yield
    for handler in list(logger.handlers):
        if handler not in saved[0]:
            logger.removeHandler(handler)
            handler.close()
    for handler in saved[0]:
        if handler not in logger.handlers:
            logger.addHandler(handler)
    logger.propagate = saved[1]
    logs.set_level(saved[3])
    logger.setLevel(saved[2])


@pytest.mark.parametrize("log_format,prefix", [("json_cee", "@cee: {"), ("json", "{")])
def test_syslog_json_lines(tmp_path, restore_logging, log_format, prefix):
    path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    try:
        logs.setup(3, stderror=False, syslog_format=log_format, syslog_address=path)
        logging.getLogger("opensips_fs.esl.manager").warning('socket "a" down')
        datagram = server.recv(65536).decode().rstrip("\0")
    finally:
        server.close()
    tag = f"opensips-fs[{os.getpid()}]: "
    assert datagram.startswith("<")             # <PRI>, then the tag, then the JSON
    body = datagram[datagram.index(">") + 1:]
    assert body.startswith(tag + prefix)
    fields = json.loads(body[len(tag) + len(prefix) - 1:])
    assert list(fields) == (CEE_KEYS if log_format == "json_cee" else JSON_KEYS)
    assert (fields.get("msg") or fields.get("message")) == 'socket "a" down\n'

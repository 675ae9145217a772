"""Logging: OpenSIPS levels and line format, the level knobs MI log_level
uses, and the guarantee that passwords never reach a log line."""

import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from opensips_fs import logs

pytestmark = pytest.mark.timeout(10)

REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \[(\d+)\] ([A-Z]+):([\w]+):(\w+): (.*)$")


class Capture(io.StringIO):
    def setup(self, level, stderror=True):
        """logs.setup(), then point its stderr handler at this buffer."""
        logs.setup(level, stderror)
        for handler in logging.getLogger("opensips_fs").handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "_opensips_fs", False):
                handler.setStream(self)


@pytest.fixture
def captured():
    """A log buffer; the opensips_fs logger's state is restored afterwards."""
    logger = logging.getLogger("opensips_fs")
    saved = (list(logger.handlers), logger.propagate, logger.level, logs.get_level())
    yield Capture()
    for handler in list(logger.handlers):
        if handler not in saved[0]:
            logger.removeHandler(handler)
    for handler in saved[0]:
        if handler not in logger.handlers:
            logger.addHandler(handler)
    logger.propagate = saved[1]
    logs.set_level(saved[3])
    logger.setLevel(saved[2])


def lines(buffer):
    return [line for line in buffer.getvalue().splitlines() if line]


def emit_all(name="opensips_fs.esl.manager"):
    log = logging.getLogger(name)
    log.log(logs.ALERT, "alert")
    log.critical("crit")
    log.error("error")
    log.warning("warning")
    log.log(logs.NOTICE, "notice")
    log.info("info")
    log.debug("debug")


@pytest.mark.parametrize("level, shown", [
    (-3, ["alert"]),
    (-2, ["alert", "crit"]),
    (-1, ["alert", "crit", "error"]),
    (0, ["alert", "crit", "error"]),
    (1, ["alert", "crit", "error", "warning"]),
    (2, ["alert", "crit", "error", "warning", "notice"]),
    (3, ["alert", "crit", "error", "warning", "notice", "info"]),
    (4, ["alert", "crit", "error", "warning", "notice", "info", "debug"]),
])
def test_opensips_levels_filter_like_opensips(captured, level, shown):
    captured.setup(level, stderror=True)
    emit_all()
    assert [line.rsplit(": ", 1)[1] for line in lines(captured)] == shown
    assert logs.get_level() == level


def test_line_format_is_opensips_like(captured):
    captured.setup(4, stderror=True)
    emit_all()

    def function_name():
        logging.getLogger("opensips_fs.mi.fifo").info("listening on %s", "/tmp/x")
    function_name()
    matches = [LINE.match(line) for line in lines(captured)]
    parsed = [m for m in matches if m is not None]
    assert len(parsed) == len(matches), lines(captured)
    assert [m.group(2) for m in parsed] == [
        "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DBG", "INFO"]
    assert {m.group(3) for m in parsed[:7]} == {"freeswitch"}
    last = parsed[-1]
    assert (last.group(3), last.group(4), last.group(5)) == (
        "mi_fifo", "function_name", "listening on /tmp/x")
    assert int(last.group(1)) > 0


@pytest.mark.parametrize("logger, module", [
    ("opensips_fs.esl.connection", "freeswitch"), ("opensips_fs.scripting", "freeswitch_scripting"),
    ("opensips_fs.db", "freeswitch_scripting"), ("opensips_fs.mi.http", "mi_http"),
    ("opensips_fs.mi.datagram", "mi_datagram"), ("opensips_fs.evi.stream", "event_stream"),
    ("opensips_fs.evi.registry", "core"), ("opensips_fs.app", "core"),
])
def test_module_names(logger, module):
    assert logs.module_of(logger) == module


def test_set_level_at_run_time(captured):
    captured.setup(3, stderror=True)
    log = logging.getLogger("opensips_fs.app")
    log.debug("hidden")
    logs.set_level(4)
    log.debug("shown")
    logs.set_level(-1)
    log.warning("hidden too")
    log.error("error shown")
    assert [line.rsplit(": ", 1)[1] for line in lines(captured)] == ["shown", "error shown"]
    logs.set_level(99)          # MI accepts any integer; beyond 4 is debug
    assert logs.get_level() == 99
    log.debug("debug at 99")
    assert lines(captured)[-1].endswith("debug at 99")


def test_setup_twice_keeps_one_handler(captured):
    captured.setup(3)
    captured.setup(3)
    logging.getLogger("opensips_fs.app").info("once")
    assert len(lines(captured)) == 1


@pytest.mark.parametrize("text, masked", [
    ("connecting to :ClueCon@127.0.0.1:8021", "connecting to :***@127.0.0.1:8021"),
    ("url fs://admin:s3cret@fs1:8021?DTMF", "url fs://admin:***@fs1:8021?DTMF"),
    ("db mysql://opensips:opensipsrw@localhost/opensips",
     "db mysql://opensips:***@localhost/opensips"),
    ("'user:pw@10.0.0.1:8022'", "'user:***@10.0.0.1:8022'"),
    ("no credentials in 127.0.0.1:8021", "no credentials in 127.0.0.1:8021"),
    ("time 12:30 and mail a@b", "time 12:30 and mail a@b"),
])
def test_scrub_masks_url_passwords(text, masked):
    assert logs.scrub(text) == masked


MASKED_URLS = [
    ("mysql://u:p@ss@h/db", "mysql://u:***@h/db"),      # password holding '@'
    ("mysql://u:pa/ss@h/db", "mysql://u:***@h/db"),     # password holding '/'
    ("u:p@h?x=a://b", "u:***@h?x=a://b"),               # a later '://' is no scheme
    ("mysql://u@h/d", "mysql://u@h/d"),                 # no password: unchanged
]


@pytest.mark.parametrize("url, masked", MASKED_URLS)
def test_mask_password_masks_the_whole_password(url, masked):
    """Commits 7616756 and 26e739b: the password runs from the user's ':'
    to the last '@', as db_url parsing reads it."""
    assert logs.mask_password(url) == masked


@pytest.mark.parametrize("url, masked", MASKED_URLS)
def test_scrub_masks_passwords_holding_at_or_slash(url, masked):
    """Commit 7616756: the log scrubber stopped at '@' or '/', leaving
    'ss@' or the whole 'pa/ss' in log lines."""
    assert logs.scrub(url) == masked
    assert logs.scrub(f"connecting to {url} now") == f"connecting to {masked} now"


def test_url_password_is_everything_up_to_the_last_at():
    assert logs.url_password("mysql://u:p@ss@h/db") == "p@ss"
    assert logs.url_password("mysql://u:pa/ss@h/db") == "pa/ss"
    assert logs.url_password("u:p@h?x=a://b") == "p"
    assert logs.url_password("mysql://u@h/d") is None


def test_registered_secrets_are_masked_everywhere(captured):
    captured.setup(3)
    logs.register_secret("Sup3rSecret!")
    logs.register_secret("ab")      # too short to mask safely: ignored
    log = logging.getLogger("opensips_fs.scripting")
    log.info("password is %s", "Sup3rSecret!")
    try:
        raise ValueError("bad auth Sup3rSecret!")
    except ValueError:
        log.exception("failed")
    output = captured.getvalue()
    assert "Sup3rSecret!" not in output
    assert "password is ***" in output
    assert "ValueError: bad auth ***" in output
    assert logs.scrub("ab cab") == "ab cab"


def test_service_never_logs_config_passwords(tmp_path):
    """End to end: secrets from the config stay out of a debug-level run."""
    cfg = tmp_path / "secret.cfg"
    cfg.write_text('''log_level=4
loadmodule "freeswitch.so"
loadmodule "freeswitch_scripting.so"
modparam("freeswitch_scripting", "db_url", "sqlite://fs.sqlite")
modparam("freeswitch_scripting", "fs_subscribe", "fs://u:PwInCfg42@127.0.0.1:1?DTMF")
''')
    proc = subprocess.Popen([sys.executable, "-m", "opensips_fs", "-f", str(cfg)],
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        import time
        time.sleep(1.5)
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "started" in err
    assert "PwInCfg42" not in err

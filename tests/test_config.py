"""The cfg parser on good and bad files: typed settings, OpenSIPS value syntax,
and every error naming FILE:LINE and saying what is valid."""

import os
import shutil
from pathlib import Path

import pytest

from opensips_fs import config
from opensips_fs.config import ConfigError

pytestmark = pytest.mark.timeout(10)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CFG = REPO / "etc" / "opensips-fs.cfg"


def write(tmp_path, text, name="test.cfg"):
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path, text) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    return info.value


# ---------------------------------------------------------------- good files

def test_empty_file_loads_nothing(tmp_path):
    cfg = config.load(write(tmp_path, "# nothing here\n\n"))
    assert cfg.loaded == []
    assert cfg.freeswitch is None and cfg.httpd is None and cfg.mi_fifo is None
    assert cfg.path == str(tmp_path / "test.cfg")
    assert cfg.dir == str(tmp_path)
    assert cfg.log_level == 2 and cfg.log_stderror is True


def test_loaded_modules_get_opensips_defaults(tmp_path):
    cfg = config.load(write(tmp_path, "\n".join(
        f'loadmodule "{name}.so"' for name in config.MODULES)))
    assert cfg.loaded == list(config.MODULES)
    assert cfg.freeswitch == config.FreeswitchSettings(
        event_heartbeat_interval=1, esl_connect_timeout=5000, esl_cmd_timeout=5000,
        esl_cmd_polling_itv=1000, fs_no_esl_timeout=86400)
    s = cfg.freeswitch_scripting
    assert s is not None
    assert (s.db_url, s.db_table, s.db_col_username, s.db_col_password, s.db_col_ip,
            s.db_col_port, s.db_col_events, s.fs_subscribe) == (
        None, "freeswitch", "username", "password", "ip", "port", "events_csv", [])
    assert (s.esl_cmd_max_size, s.db_timeout) == (65536, 10000)
    h = cfg.httpd
    assert h is not None and cfg.mi_http is not None and cfg.mi_fifo is not None and cfg.mi_datagram is not None
    assert (h.ip, h.port, h.auth_realm, h.auth_username, h.auth_password, h.tls_cert_file,
            h.tls_key_file, h.conn_timeout) == (
        "127.0.0.1", 8888, "OpenSIPS MI", None, None, None, None, 30)
    assert cfg.mi_http.root == "mi"
    assert (cfg.mi_fifo.fifo_name, cfg.mi_fifo.fifo_mode, cfg.mi_fifo.reply_dir) == (
        "/tmp/opensips_fifo", 0o660, "/tmp/")
    assert cfg.mi_datagram.socket_name == "udp:127.0.0.1:8080"
    assert (cfg.mi_datagram.host, cfg.mi_datagram.port) == ("127.0.0.1", 8080)
    for name in ("event_datagram", "event_stream", "event_xmlrpc", "event_http", "event_rabbitmq"):
        assert getattr(cfg, name).queue_size == 100000
    assert cfg.event_http is not None and cfg.event_http.verify_cert is True
    r = cfg.event_rabbitmq        # OpenSIPS's defaults, then ours
    assert r is not None
    assert (r.heartbeat, r.connect_timeout, r.timeout, r.use_tls) == (0, 500, 0, False)
    assert (r.tls_ca_file, r.tls_cert_file, r.tls_key_file, r.verify_cert) == (None, None, None, True)
    assert list(cfg.evi_transports()) == [
        "event_datagram", "event_stream", "event_xmlrpc", "event_http", "event_rabbitmq"]


def test_event_rabbitmq_modparams(tmp_path):
    cfg = config.loads("\n".join([
        'loadmodule "event_rabbitmq.so"',
        'modparam("event_rabbitmq", "heartbeat", 10)',
        'modparam("event_rabbitmq", "connect_timeout", 2000)',
        'modparam("event_rabbitmq", "timeout", 3000)',
        'modparam("event_rabbitmq", "use_tls", 1)',
        'modparam("event_rabbitmq", "tls_ca_file", "certs/ca.pem")',
        'modparam("event_rabbitmq", "verify_cert", 0)']) + "\n", str(tmp_path / "x.cfg"))
    r = cfg.event_rabbitmq
    assert r is not None
    assert (r.heartbeat, r.connect_timeout, r.timeout, r.use_tls, r.verify_cert) == (
        10, 2000, 3000, True, False)
    assert r.tls_ca_file == str(tmp_path / "certs" / "ca.pem")   # relative to the config
    for bad in ('modparam("event_rabbitmq", "heartbeat", 65536)',
                'modparam("event_rabbitmq", "connect_timeout", 0)',
                'modparam("event_rabbitmq", "timeout", -1)'):
        with pytest.raises(config.ConfigError) as error:
            config.loads('loadmodule "event_rabbitmq.so"\n' + bad + "\n", str(tmp_path / "x.cfg"))
        assert "out of range" in str(error.value)


def test_full_config_with_every_syntax_form(tmp_path):
    text = '''
# a comment
loadmodule "freeswitch.so"          # trailing comment
loadmodule "/usr/lib/x86_64-linux-gnu/opensips/modules/freeswitch_scripting.so"
loadmodule "httpd"
loadmodule "mi_http.so";
loadmodule "mi_fifo.so"
loadmodule "mi_datagram.so"
loadmodule "event_stream.so"
/* a block
   comment over lines */
log_level = -1
log_stderror=no

modparam("freeswitch", "esl_cmd_timeout", 1500)
modparam("freeswitch", "esl_connect_timeout", "2500")
modparam("freeswitch", "event_heartbeat_interval", 0x0A)
modparam("freeswitch_scripting", "db_url", "mysql://opensips:opensipsrw@localhost/opensips")
modparam("freeswitch_scripting", "db_table", 'fs_boxes')
modparam("freeswitch_scripting", "fs_subscribe",
         ":ClueCon@127.0.0.1:8021?CHANNEL_ANSWER,BACKGROUND_JOB")
modparam("freeswitch_scripting", "fs_subscribe", "fs://admin:secret@10.0.0.2:8022?DTMF")
modparam("httpd", "ip", "0.0.0.0")
modparam("httpd", "port", 18888)
modparam("httpd", "auth_username", "admin")
modparam("httpd", "auth_password", "pa\\"ss")
modparam("mi_http", "root", "json")
modparam("mi_fifo", "fifo_name", "run/fifo")
modparam("mi_fifo", "fifo_mode", 0666)
modparam("mi_fifo", "reply_dir", "replies/")
modparam("mi_datagram", "socket_name", "udp:127.0.0.1:18080")
modparam("event_stream", "queue_size", 5000)
'''
    path = write(tmp_path, text)
    cfg = config.load(path)
    assert cfg.loaded == ["freeswitch", "freeswitch_scripting", "httpd", "mi_http", "mi_fifo",
                          "mi_datagram", "event_stream"]
    assert cfg.log_level == -1 and cfg.log_stderror is False
    assert cfg.freeswitch is not None and cfg.httpd is not None and cfg.mi_http is not None
    assert cfg.mi_fifo is not None and cfg.mi_datagram is not None and cfg.event_stream is not None
    assert cfg.freeswitch.esl_cmd_timeout == 1500
    assert cfg.freeswitch.esl_connect_timeout == 2500
    assert cfg.freeswitch.event_heartbeat_interval == 10
    s = cfg.freeswitch_scripting
    assert s is not None
    assert s.db_url == "mysql://opensips:opensipsrw@localhost/opensips"
    assert s.db_table == "fs_boxes"
    assert s.fs_subscribe == [
        config.SubscribeParam(":ClueCon@127.0.0.1:8021?CHANNEL_ANSWER,BACKGROUND_JOB",
                              str(path), 21),
        config.SubscribeParam("fs://admin:secret@10.0.0.2:8022?DTMF", str(path), 22),
    ]
    assert cfg.httpd.ip == "0.0.0.0" and cfg.httpd.port == 18888
    assert cfg.httpd.auth_password == 'pa"ss'
    assert cfg.mi_http.root == "json"
    assert cfg.mi_fifo.fifo_name == str(tmp_path / "run" / "fifo")
    assert cfg.mi_fifo.fifo_mode == 0o666
    assert cfg.mi_fifo.reply_dir == str(tmp_path / "replies") + "/"
    assert cfg.mi_datagram.port == 18080
    assert cfg.event_stream.queue_size == 5000
    assert cfg.event_datagram is None


@pytest.mark.parametrize("written, value", [(None, 0), ("1", 1), ("0", 0)])
def test_event_xmlrpc_use_struct_param(tmp_path, written, value):
    """Commit 32fa388: OpenSIPS's event_xmlrpc modparam (int, default 0)."""
    text = 'loadmodule "event_xmlrpc.so"\n'
    if written is not None:
        text += f'modparam("event_xmlrpc", "use_struct_param", {written})\n'
    cfg = config.load(write(tmp_path, text))
    assert isinstance(cfg.event_xmlrpc, config.EventXmlRpcSettings)
    assert cfg.event_xmlrpc.use_struct_param == value
    assert cfg.evi_transports()["event_xmlrpc"] is cfg.event_xmlrpc


def test_evi_queue_bounds(tmp_path):
    """Issue 11: queues bounded by bytes per destination and in all."""
    cfg = config.load(write(tmp_path, 'loadmodule "event_stream.so"\n'))
    assert cfg.evi_queue_bytes == 64 << 20
    assert cfg.event_stream is not None
    assert (cfg.event_stream.queue_bytes, cfg.event_stream.drain_timeout) == (16 << 20, 3)
    cfg = config.load(write(tmp_path, 'evi_queue_bytes = 0x100000\nloadmodule "event_stream.so"\n'
                            'modparam("event_stream", "queue_bytes", 65536)\n'
                            'modparam("event_stream", "drain_timeout", 0)\n'))
    assert cfg.evi_queue_bytes == 1 << 20
    assert cfg.event_stream is not None
    assert (cfg.event_stream.queue_bytes, cfg.event_stream.drain_timeout) == (65536, 0)


def test_secrets_stay_out_of_reprs(tmp_path):
    cfg = config.load(write(tmp_path, '''
loadmodule "freeswitch.so"
loadmodule "freeswitch_scripting.so"
loadmodule "httpd.so"
modparam("freeswitch_scripting", "db_url", "postgres://fs:TopSecret1@db/opensips")
modparam("freeswitch_scripting", "fs_subscribe", "fs://u:TopSecret2@h:8021?DTMF")
modparam("httpd", "auth_password", "TopSecret3")
'''))
    text = repr(cfg)
    assert "fs_subscribe" in text and "postgres://fs:***@db/opensips" in text
    for secret in ("TopSecret1", "TopSecret2", "TopSecret3"):
        assert secret not in text


@pytest.mark.parametrize("written, level", [
    ("-3", -3), ("-2", -2), ("-1", -1), ("0", 0), ("1", 1), ("2", 2), ("3", 3), ("4", 4),
    ("error", -1), ("warning", 1), ("notice", 2), ("info", 3), ("debug", 4), ('"info"', 3),
    ("DEBUG", 4),
])
def test_log_level_numbers_and_names(tmp_path, written, level):
    assert config.load(write(tmp_path, f"log_level={written}\n")).log_level == level


@pytest.mark.parametrize("written, value", [
    ("yes", True), ("no", False), ("1", True), ("0", False), ("true", True), ("off", False)])
def test_log_stderror_values(tmp_path, written, value):
    assert config.load(write(tmp_path, f"log_stderror = {written}")).log_stderror is value


def test_octal_hex_and_decimal_integers_like_opensips(tmp_path):
    cfg = config.load(write(tmp_path, '''
loadmodule "mi_fifo.so"
loadmodule "event_datagram.so"
modparam("mi_fifo", "fifo_mode", 0600)
modparam("event_datagram", "queue_size", 0x10)
'''))
    assert cfg.mi_fifo is not None and cfg.event_datagram is not None
    assert cfg.mi_fifo.fifo_mode == 0o600
    assert cfg.event_datagram.queue_size == 16
    cfg = config.load(write(tmp_path, 'loadmodule "mi_fifo.so"\n'
                                      'modparam("mi_fifo", "fifo_mode", "0640")\n'))
    assert cfg.mi_fifo is not None and cfg.mi_fifo.fifo_mode == 0o640


def test_ignored_modules_are_noted_not_errors(tmp_path):
    path = write(tmp_path, '''loadmodule "db_sqlite.so"
loadmodule "db_mysql.so"
loadmodule "db_postgres.so"
loadmodule "proto_udp.so"
loadmodule "proto_tcp.so"
loadmodule "json.so"
modparam("db_mysql", "exec_query_threshold", 60000)
''')
    cfg = config.load(path)
    assert cfg.loaded == []
    assert len(cfg.notes) == 7
    assert cfg.notes[0] == (f'{path}:1: loadmodule "db_sqlite.so" ignored: '
                            "the db_url scheme picks the SQL driver")
    assert cfg.notes[6].startswith(f"{path}:7: ")


def test_sqlite_urls_stay_textual(tmp_path):
    for url in ("sqlite:///var/lib/opensips-fs/fs.sqlite", "sqlite://../var/opensips-fs.sqlite"):
        cfg = config.load(write(tmp_path, f'''loadmodule "freeswitch.so"
loadmodule "freeswitch_scripting.so"
modparam("freeswitch_scripting", "db_url", "{url}")'''))
        assert cfg.freeswitch_scripting is not None and cfg.freeswitch_scripting.db_url == url


def test_scripting_needs_freeswitch_loaded_in_any_order(tmp_path):
    cfg = config.load(write(tmp_path, 'loadmodule "freeswitch_scripting.so"\n'
                                      'loadmodule "freeswitch.so"\n'))
    assert cfg.loaded == ["freeswitch_scripting", "freeswitch"]


def test_include_file_resolves_against_its_folder(tmp_path):
    (tmp_path / "conf.d").mkdir()
    write(tmp_path / "conf.d", 'loadmodule "mi_fifo.so"\n'
                               'modparam("mi_fifo", "fifo_name", "fifo")\n', "mi.cfg")
    cfg = config.load(write(tmp_path, 'include_file "conf.d/mi.cfg"\nlog_level=4\n'))
    assert cfg.mi_fifo is not None and cfg.mi_fifo.fifo_name == str(tmp_path / "conf.d" / "fifo")
    assert cfg.log_level == 4


def test_default_config_loads_as_documented():
    cfg = config.load(DEFAULT_CFG)
    assert cfg.dir == str(DEFAULT_CFG.parent)
    for name in ("freeswitch", "freeswitch_scripting", "httpd", "mi_http", "mi_fifo",
                 "mi_datagram", "event_datagram", "event_stream"):
        assert name in cfg.loaded
    assert cfg.httpd is not None and cfg.mi_http is not None and cfg.mi_fifo is not None
    assert cfg.mi_datagram is not None and cfg.freeswitch_scripting is not None
    assert (cfg.httpd.ip, cfg.httpd.port, cfg.mi_http.root) == ("127.0.0.1", 8888, "mi")
    assert cfg.mi_fifo.fifo_name == "/tmp/opensips_fifo"
    assert cfg.mi_datagram.socket_name == "udp:127.0.0.1:8080"
    assert cfg.freeswitch_scripting.db_url == "sqlite://../var/opensips-fs.sqlite"
    assert cfg.freeswitch_scripting.fs_subscribe == []


def test_demo_config_loads():
    cfg = config.load(REPO / "etc" / "demo.cfg")
    assert cfg.freeswitch_scripting is not None
    assert [p.url for p in cfg.freeswitch_scripting.fs_subscribe]


# ---------------------------------------------------------------- bad files

BAD = [
    # (config text, line of the error, words the message must contain)
    ('evi_queue_bytes = 10', 1, ["bad evi_queue_bytes '10'", "at least 1024"]),
    ('evi_queue_bytes = "big"', 1, ["bad evi_queue_bytes", "a number of bytes"]),
    ('loadmodule "event_http.so"\nmodparam("event_http", "queue_bytes", 100)', 2,
     ['modparam("event_http", "queue_bytes")', "out of range"]),
    ('loadmodule "tm.so"', 1, ['unknown module "tm"', "freeswitch, freeswitch_scripting"]),
    ('loadmodule "freeswich.so"', 1, ['unknown module "freeswich"', 'did you mean "freeswitch"']),
    ('loadmodule httpd.so', 1, ["expected a quoted module name"]),
    ('\n\nmodparam("httpd", "port", 8888)', 3,
     ['module "httpd", which is not loaded', 'loadmodule "httpd.so"']),
    ('modparam("httpd", "port", 1)\nloadmodule "httpd.so"', 1, ["not loaded"]),
    ('loadmodule "httpd.so"\nmodparam("httpd", "prt", 1)', 2,
     ['module "httpd" has no parameter "prt"', "valid parameters are ip, port",
      'did you mean "port"']),
    ('loadmodule "httpd.so"\nmodparam("httpd", "port", "http")', 2,
     ['modparam("httpd", "port")', "expects an integer, got string 'http'"]),
    ('loadmodule "httpd.so"\nmodparam("httpd", "port", 70000)', 2,
     ["out of range (valid: 0..65535)"]),
    ('loadmodule "httpd.so"\nmodparam("httpd", "ip", 127)', 2, ["expects a quoted string"]),
    ('loadmodule "freeswitch.so"\nmodparam("freeswitch", "esl_cmd_timeout", 0)', 2,
     ["out of range (valid: >= 1)"]),
    ('loadmodule "freeswitch.so"\nmodparam("freeswitch", "esl_cmd_timeout", -5)', 2,
     ["out of range"]),
    ('loadmodule "mi_fifo.so"\nmodparam("mi_fifo", "fifo_mode", "rw")', 2,
     ["expects a file mode such as 0660"]),
    ('loadmodule "mi_fifo.so"\nmodparam("mi_fifo", "fifo_name", "")', 2, ["must not be empty"]),
    ('loadmodule "mi_datagram.so"\nmodparam("mi_datagram", "socket_name", "udp:127.0.0.1")', 2,
     ["expects udp:IP:PORT"]),
    ('loadmodule "mi_datagram.so"\nmodparam("mi_datagram", "socket_name", "tcp:1.2.3.4:5")', 2,
     ["expects udp:IP:PORT or a unix socket path"]),
    ('loadmodule "mi_http.so"', 1, ['module "mi_http" needs module "httpd"']),
    ('loadmodule "freeswitch_scripting.so"', 1,
     ['module "freeswitch_scripting" needs module "freeswitch"', 'loadmodule "freeswitch.so"']),
    ('loadmodule "freeswitch.so"\nloadmodule "freeswitch_scripting.so"\n'
     'modparam("freeswitch_scripting", "fs_subscribe", "127.0.0.1:8021?DTMF")', 3,
     ["has no password"]),
    ('loadmodule "freeswitch.so"\nloadmodule "freeswitch_scripting.so"\n\n'
     'modparam("freeswitch_scripting", "fs_subscribe", ":pw@127.0.0.1:99999")', 4,
     ["bad FreeSWITCH URL", "out of range"]),
    ('loadmodule "freeswitch.so"\nloadmodule "freeswitch_scripting.so"\n'
     'modparam("freeswitch_scripting", "db_url", "oracle://x@y/z")', 3,
     ["unsupported db_url", "sqlite:///abs/path", "mysql://", "postgres://"]),
    # the configuration refuses what the database layer could not connect with
    ('loadmodule "freeswitch.so"\nloadmodule "freeswitch_scripting.so"\n'
     'modparam("freeswitch_scripting", "db_url", "mysql://u:Sekr1t@h")', 3,
     ["db_url 'mysql://u:***@h' names no database"]),
    ('loadmodule "freeswitch.so"\nloadmodule "freeswitch_scripting.so"\n'
     'modparam("freeswitch_scripting", "db_url", "postgres://u:Sekr1t@h:port/db")', 3,
     ["bad port 'port' in db_url 'postgres://u:***@h:port/db'"]),
    ('loadmodule "freeswitch.so"\nloadmodule "freeswitch_scripting.so"\n'
     'modparam("freeswitch_scripting", "db_url", "mysql://u:Sekr1t@:3306/db")', 3,
     ["names no host"]),
    ('loadmodule "freeswitch.so"\nloadmodule "freeswitch_scripting.so"\n'
     'modparam("freeswitch_scripting", "db_url", "sqlite:///")', 3, ["names no file"]),
    ('loadmodule "freeswitch.so"\nloadmodule "freeswitch_scripting.so"\n'
     'modparam("freeswitch_scripting", "db_table", "free switch")', 3, ["SQL identifier"]),
    ('log_level=9', 1, ["log level 9 out of range", "-3 to 4", "error, warning, notice"]),
    ('log_level=verbose', 1, ["bad log level 'verbose'"]),
    ('log_level 3', 1, ["expected '=' after log_level"]),
    ('log_stderror=maybe', 1, ["expected yes or no"]),
    ('children=4', 1, ["unknown global parameter 'children'", "log_level, log_stderror"]),
    ('route {\n  exit;\n}', 1, ["'route' is not supported"]),
    ('loadmodule "httpd.so"\nmodparam("httpd", "port", 8888', 2, ["expected ')'"]),
    ('loadmodule "httpd.so"\nmodparam("httpd" "port", 8888)', 2, ["expected ','"]),
    ('loadmodule "httpd.so"\nmodparam("httpd", "ip", "127.0.0.1)\n\n', 2,
     ["unterminated string"]),
    ('/* never closed\n\nloadmodule "httpd.so"', 1, ["unterminated /* comment"]),
    ('loadmodule "httpd.so"\nmodparam("httpd", "port", 88a)', 2, ["bad modparam value '88a)'"]),
    ('$var(x) = 1', 1, ["unexpected '$var(x)'", "loadmodule, modparam"]),
    ('modparam("nosuch", "x", 1)', 1, ['unknown module "nosuch" in modparam']),
    ('modparam("db_mysql", "x", 1)', 1, ['module "db_mysql", which is not loaded']),
    ('loadmodule "httpd.so"\nmodparam("httpd", "port", port)', 2, ["bad modparam value 'port'"]),
    ('include_file "missing.cfg"', 1, ["cannot read included file", "missing.cfg"]),
]


@pytest.mark.parametrize("text, line, words", BAD)
def test_bad_config_names_file_line_and_what_is_valid(tmp_path, text, line, words):
    error = load_error(tmp_path, text)
    path = str(tmp_path / "test.cfg")
    assert (error.file, error.line) == (path, line)
    assert str(error).startswith(f"{path}:{line}: ")
    for word in words:
        assert word in str(error)


def test_error_in_included_file_names_that_file(tmp_path):
    write(tmp_path, '\nloadmodule "nope.so"\n', "inc.cfg")
    error = load_error(tmp_path, 'log_level=3\ninclude_file "inc.cfg"\n')
    assert str(error).startswith(f"{tmp_path / 'inc.cfg'}:2: ")


def test_include_loop_is_an_error(tmp_path):
    error = load_error(tmp_path, 'include_file "test.cfg"\n')
    assert "include" in str(error)


def test_bad_url_error_never_shows_the_password(tmp_path):
    error = load_error(tmp_path, 'loadmodule "freeswitch.so"\n'
                                 'loadmodule "freeswitch_scripting.so"\n'
                                 'modparam("freeswitch_scripting", "fs_subscribe",'
                                 ' "u:Sekr1t@h:port")\n')
    assert error.line == 3 and "Sekr1t" not in str(error)
    error = load_error(tmp_path, 'loadmodule "freeswitch.so"\n'
                                 'loadmodule "freeswitch_scripting.so"\n'
                                 'modparam("freeswitch_scripting", "db_url",'
                                 ' "oracle://u:Sekr1t@h/db")\n')
    assert "Sekr1t" not in str(error)


def test_db_url_password_with_at_never_shows_in_errors(tmp_path):
    """Commit 7616756: the masker cut the password at its first '@', so a
    bad db_url with password 'p@ss' showed 'ss@' in the error."""
    error = load_error(tmp_path, 'loadmodule "freeswitch.so"\n'
                                 'loadmodule "freeswitch_scripting.so"\n'
                                 'modparam("freeswitch_scripting","db_url","mysq://u:p@ss@h/db")\n')
    text = str(error)
    assert error.line == 3 and "'mysq://u:***@h/db'" in text
    # 'ss@' does appear, in the help's "user:pass@host" forms; the URL's does not
    assert "p@ss" not in text and "ss@" not in text.replace("user:pass@host", "")


def test_config_secrets_hold_the_whole_db_url_password(tmp_path):
    """Commit 7616756: only 'p' of 'p@ss' was registered as a secret."""
    from opensips_fs.app import config_secrets
    cfg = config.load(write(tmp_path, 'loadmodule "freeswitch.so"\n'
                                      'loadmodule "freeswitch_scripting.so"\n'
                                      'modparam("freeswitch_scripting","db_url","mysql://u:p@ss@h/db")\n'))
    assert cfg.freeswitch_scripting is not None
    assert cfg.freeswitch_scripting.db_url == "mysql://u:p@ss@h/db"
    assert config_secrets(cfg) == ["p@ss"]
    assert "p@ss" not in repr(cfg) and "ss@" not in repr(cfg)


def test_bad_auth_password_is_not_echoed(tmp_path):
    error = load_error(tmp_path, 'loadmodule "httpd.so"\n'
                                 'modparam("httpd", "auth_password", 73519)\n')
    assert error.line == 2 and "expects a quoted string" in str(error)
    assert "73519" not in str(error)


def test_unreadable_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.cfg"
    with pytest.raises(ConfigError) as info:
        config.load(missing)
    assert str(info.value) == f"{missing}: cannot read config file: No such file or directory"
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path)
    assert "is a directory" in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_permission(tmp_path):
    path = write(tmp_path, "log_level=3\n")
    path.chmod(0)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert "Permission denied" in str(info.value)


def test_binary_file_is_an_error(tmp_path):
    path = tmp_path / "bin.cfg"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value).startswith(f"{path}: cannot read config file")


def test_parse_log_level_function():
    assert config.parse_log_level("notice") == 2
    assert config.parse_log_level(" -2 ") == -2
    for bad in ("5", "-4", "loud", "", True):
        with pytest.raises(ValueError):
            config.parse_log_level(bad)


def test_copy_of_default_config_with_other_ports(tmp_path):
    """How the other tests reuse the default config: copy, then override."""
    shutil.copy(DEFAULT_CFG, tmp_path / "opensips-fs.cfg")
    text = (tmp_path / "opensips-fs.cfg").read_text() + (
        '\nmodparam("httpd", "port", 0)\n'
        f'modparam("mi_fifo", "fifo_name", "{tmp_path}/fifo")\n')
    # the default config already sets these params: setting again wins
    cfg = config.loads(text, str(tmp_path / "opensips-fs.cfg"))
    assert cfg.httpd is not None and cfg.mi_fifo is not None
    assert cfg.httpd.port == 0
    assert cfg.mi_fifo.fifo_name == f"{tmp_path}/fifo"


# ---------------------------------------------------------------- any input

from hypothesis import given, settings, strategies as st  # noqa: E402

FRAGMENTS = st.sampled_from([
    'loadmodule', 'modparam', '"httpd.so"', '"httpd"', '"port"', '"mi_fifo"', '"fifo_mode"',
    '"freeswitch_scripting"', '"freeswitch.so"', '"fs_subscribe"', '":pw@h:1?A"', 'log_level',
    'log_stderror', '(', ')', ',', '=', ';', '\n', ' ', '#', '/*', '*/', '"', "'", '\\', '0666',
    '-1', '0x1f', '8888', 'yes', 'info', 'route', '{', '}', '$', 'é', '\x00',
])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=120), st.lists(FRAGMENTS, max_size=40).map("".join)))
def test_any_text_gives_a_config_or_a_config_error(text):
    try:
        cfg = config.loads(text, "/nonexistent/h/x.cfg")
    except ConfigError as error:
        assert str(error).startswith("/nonexistent/h/x.cfg:")
        assert error.line is not None and 1 <= error.line <= text.count("\n") + 1
    else:
        assert set(cfg.loaded) <= set(config.MODULES)


def test_every_parameter_is_a_settings_field():
    from dataclasses import fields
    for module, spec in config.MODULES.items():
        names = {f.name for f in fields(spec.settings)}
        assert set(spec.params) <= names, module
        assert [name for name, _ in config.settings_fields(module)] == list(spec.params)
    assert dict(config.settings_fields("freeswitch_scripting"))["fs_subscribe"] == []

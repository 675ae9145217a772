"""The configuration file: the OpenSIPS cfg subset opensips-fs understands.

Supported (OpenSIPS syntax and meaning):

* ``loadmodule "NAME.so"`` enables a module (a path or a missing ``.so`` is
  fine, only the base name counts);
* ``modparam("module", "param", value)`` sets a parameter of a loaded module;
  a value is a double- or single-quoted string or an integer (decimal,
  ``0x`` hex, or octal with a leading ``0`` such as ``0666``, as OpenSIPS
  reads numbers); ``fs_subscribe`` may be repeated;
* ``log_level=N`` (-3..4 or error/warning/notice/info/debug),
  ``log_stderror=yes|no`` and ``stderror_log_format`` /
  ``syslog_log_format`` = ``"plain_text"``, ``"json"`` or ``"json_cee"``;
* ``include_file "other.cfg"`` / ``import_file "other.cfg"``;
* ``#`` line comments and ``/* ... */`` block comments; a ``;`` after a
  statement is allowed.

``loadmodule`` of a SQL driver, of proto_udp/proto_tcp or of json is accepted
and ignored (noted in ``Config.notes``, which the command line logs), so an
OpenSIPS cfg fragment can be reused. Anything else is a `ConfigError` whose
text is ``FILE:LINE: what is wrong; what is valid``. Parameter names and
defaults are OpenSIPS's own; values are kept in OpenSIPS units (ms, s).
Relative paths resolve against the folder of the file that names them.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable

from . import url as fsurl
from .dburl import DbUrlError, parse_db_url
from .logs import LOG_FORMATS, mask_password
from .reasons import short_reason

__all__ = [
    "Config", "ConfigError", "EventHttpSettings", "EventRabbitmqSettings", "EventXmlRpcSettings",
    "EviTransportSettings",
    "FreeswitchSettings", "HttpdSettings", "IGNORED_MODULES", "LOG_LEVELS",
    "MODULES", "MiDatagramSettings", "MiFifoSettings", "MiHttpSettings",
    "ScriptingSettings", "SubscribeParam", "load", "loads", "parse_log_level", "split_udp",
]


class ConfigError(Exception):
    """A configuration error; ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, file: str, line: int | None, message: str):
        super().__init__(file, line, message)
        self.file = file
        self.line = line
        self.message = message

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


# --------------------------------------------------------------------------
# Settings objects, one per implemented module. Field names are the modparam
# names, defaults are OpenSIPS's (or ours, where the parameter is ours).

@dataclass
class FreeswitchSettings:
    event_heartbeat_interval: int = 1       # s
    esl_connect_timeout: int = 5000         # ms
    esl_cmd_timeout: int = 5000             # ms
    esl_cmd_polling_itv: int = 1000         # us; accepted, no effect
    fs_no_esl_timeout: int = 86400          # s (ours; fixed in OpenSIPS)
    esl_max_frame_size: int = 4194304       # bytes; largest ESL event or reply kept (ours)
    esl_max_sockets: int = 1000             # ESL sockets MI calls may create (ours)


@dataclass(frozen=True)
class SubscribeParam:
    """One ``fs_subscribe`` modparam, with where it was written."""

    url: str
    file: str
    line: int

    def __repr__(self) -> str:  # the URL holds a password
        return f"SubscribeParam({fsurl.parse(self.url)!r}, {self.file}:{self.line})"


@dataclass
class ScriptingSettings:
    db_url: str | None = None
    db_table: str = "freeswitch"
    db_col_username: str = "username"
    db_col_password: str = "password"
    db_col_ip: str = "ip"
    db_col_port: str = "port"
    db_col_events: str = "events_csv"
    fs_subscribe: list[SubscribeParam] = field(default_factory=list)
    esl_cmd_max_size: int = 65536           # bytes; longest freeswitch_esl command (ours)
    db_timeout: int = 10000                 # ms; bound on one DB query (ours)
    ready_max_down: int = 0                 # /ready: DB/modparam sockets that may be down (ours)

    def __repr__(self) -> str:  # db_url may hold a password
        return (f"ScriptingSettings(db_url={_mask_url(self.db_url)!r}, "
                f"db_table={self.db_table!r}, fs_subscribe={self.fs_subscribe!r})")


@dataclass
class HttpdSettings:
    ip: str = "127.0.0.1"
    port: int = 8888
    auth_realm: str = "OpenSIPS MI"
    auth_username: str | None = None
    auth_password: str | None = field(default=None, repr=False)
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    conn_timeout: int = 30                  # s, idle keep-alive
    max_connections: int | None = None      # open MI HTTP connections (ours); None: automatic
    probes_auth: bool = True                # with auth on, /metrics and /ready need it too (ours)
    metrics_max_age: int = 1000             # ms a rendered /metrics page is served again (ours)

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass
class MiHttpSettings:
    root: str = "mi"


@dataclass
class MiFifoSettings:
    fifo_name: str = "/tmp/opensips_fifo"
    fifo_mode: int = 0o660
    reply_dir: str = "/tmp/"


@dataclass
class MiDatagramSettings:
    socket_name: str = "udp:127.0.0.1:8080"

    @property
    def host(self) -> str | None:
        """The UDP host, or None for a unix socket."""
        return (split_udp(self.socket_name) or (None, None))[0]

    @property
    def port(self) -> int | None:
        return (split_udp(self.socket_name) or (None, None))[1]


@dataclass
class EviTransportSettings:
    queue_size: int = 100000                # events queued per destination (ours)
    queue_bytes: int = 16 << 20             # bytes queued per destination (ours)
    drain_timeout: int = 3                  # seconds the queues get at shutdown (ours)


@dataclass
class EventXmlRpcSettings(EviTransportSettings):
    use_struct_param: int = 0               # non-zero: each named param in its own <struct>


@dataclass
class EventHttpSettings(EviTransportSettings):
    verify_cert: bool = True                # https: check the server certificate


@dataclass
class EventRabbitmqSettings(EviTransportSettings):
    heartbeat: int = 0                      # s; 0: no AMQP heartbeats (OpenSIPS's default)
    connect_timeout: int = 500              # ms; TCP connect, TLS and AMQP handshake (each)
    timeout: int = 0                        # ms; a publish unconfirmed this long: reconnect (0: none)
    use_tls: bool = False                   # tls_domain= sockets allowed (OpenSIPS's switch)
    tls_ca_file: str | None = None          # ours: CA bundle the broker is verified with
    tls_cert_file: str | None = None        # ours: client certificate (with tls_key_file)
    tls_key_file: str | None = None
    verify_cert: bool = True                # ours: 0 accepts any broker certificate


# --------------------------------------------------------------------------
# Log levels

LOG_LEVELS = {
    "alert": -3, "crit": -2, "critical": -2, "error": -1, "err": -1,
    "warning": 1, "warn": 1, "notice": 2, "info": 3, "debug": 4, "dbg": 4,
}
LOG_LEVEL_HELP = "an integer from -3 to 4 or one of error, warning, notice, info, debug"


def parse_log_level(value: object) -> int:
    """An OpenSIPS log level from a number or a name; raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"bad log level {value!r}: expected {LOG_LEVEL_HELP}")
    if isinstance(value, int):
        level = value
    else:
        text = str(value).strip()
        if text.lower() in LOG_LEVELS:
            return LOG_LEVELS[text.lower()]
        try:
            level = int(text)
        except ValueError:
            raise ValueError(f"bad log level {text!r}: expected {LOG_LEVEL_HELP}") from None
    if not -3 <= level <= 4:
        raise ValueError(f"log level {level} out of range: expected {LOG_LEVEL_HELP}")
    return level


# --------------------------------------------------------------------------
# The whole configuration

@dataclass
class Config:
    path: str
    dir: str
    log_level: int = 2                      # L_NOTICE, OpenSIPS's default
    log_stderror: bool = True               # ours: a foreground service
    stderror_log_format: str = "plain_text"  # plain_text, json, json_cee
    syslog_log_format: str = "plain_text"
    evi_queue_bytes: int = 64 << 20         # ours: bytes queued by all EVI destinations
    loaded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # "FILE:LINE: text", to log
    freeswitch: FreeswitchSettings | None = None
    freeswitch_scripting: ScriptingSettings | None = None
    httpd: HttpdSettings | None = None
    mi_http: MiHttpSettings | None = None
    mi_fifo: MiFifoSettings | None = None
    mi_datagram: MiDatagramSettings | None = None
    event_datagram: EviTransportSettings | None = None
    event_stream: EviTransportSettings | None = None
    event_xmlrpc: EventXmlRpcSettings | None = None
    event_http: EventHttpSettings | None = None
    event_rabbitmq: EventRabbitmqSettings | None = None

    def evi_transports(self) -> dict[str, EviTransportSettings]:
        """The loaded ``event_*`` modules and their settings."""
        return {name: getattr(self, name) for name in EVI_MODULES
                if getattr(self, name) is not None}


# --------------------------------------------------------------------------
# Parameter types: each converter takes the written value (str or int) and
# the folder of the file, returns the typed value or raises _BadValue.

class _BadValue(Exception):
    pass


# (written value, folder of the file) -> the value of the settings field it sets
_Converter = Callable[[str | int, str], Any]


def _describe(value: str | int) -> str:
    return f"integer {value}" if isinstance(value, int) else f"string {value!r}"


def _int(value: str | int, _dir: str | None = None) -> int:
    if isinstance(value, int):
        return value
    text = value.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)          # OpenSIPS converts a numeric string for an int param
    raise _BadValue(f"expects an integer, got {_describe(value)}")


def _ranged(low: int, high: int | None = None) -> _Converter:
    def convert(value: str | int, _dir: str | None = None) -> int:
        number = _int(value)
        if number < low or (high is not None and number > high):
            span = f"{low}..{high}" if high is not None else f">= {low}"
            raise _BadValue(f"value {number} out of range (valid: {span})")
        return number
    return convert


def _str(value: str | int, _dir: str | None = None) -> str:
    if not isinstance(value, str):
        raise _BadValue(f"expects a quoted string, got {_describe(value)}")
    return value


def _name(value: str | int, _dir: str | None = None) -> str:
    text = _str(value)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        raise _BadValue(f"expects an SQL identifier (letters, digits, _), got {text!r}")
    return text


def _optional_str(value: str | int, _dir: str | None = None) -> str | None:
    return _str(value) or None


def _secret(value: str | int, _dir: str | None = None) -> str | None:
    """A password: like a string, but never echoed in an error."""
    if not isinstance(value, str):
        raise _BadValue("expects a quoted string, got an integer")
    return value or None


def _path(value: str | int, base_dir: str) -> str | None:
    text = _str(value)
    return _resolve(text, base_dir) if text else None


def _resolve(text: str, base_dir: str) -> str:
    """``text`` as a path from ``base_dir`` (a trailing slash is kept)."""
    keep_slash = text.endswith("/")
    resolved = os.path.normpath(os.path.join(base_dir, text))
    return resolved + "/" if keep_slash and not resolved.endswith("/") else resolved


def _bool(value: str | int, _dir: str | None = None) -> bool:
    if isinstance(value, int):
        if value in (0, 1):
            return bool(value)
    elif value.strip().lower() in _YES:
        return True
    elif value.strip().lower() in _NO:
        return False
    raise _BadValue(f"expects 0 or 1 (or yes/no), got {_describe(value)}")


def _mode(value: str | int, _dir: str | None = None) -> int:
    """A file mode: an integer (``0666`` is already octal), or an octal string."""
    if isinstance(value, int):
        mode = value
    elif re.fullmatch(r"0?[0-7]{3,4}", value.strip()):
        mode = int(value.strip(), 8)
    else:
        raise _BadValue(f"expects a file mode such as 0660, got {_describe(value)}")
    if not 0 <= mode <= 0o7777:
        raise _BadValue(f"file mode {mode:#o} out of range (valid: 0..07777)")
    return mode


def _ip(value: str | int, _dir: str | None = None) -> str:
    text = _str(value).strip()
    if not text:
        raise _BadValue("expects an IP address, got an empty string")
    return text


def _datagram_socket(value: str | int, _dir: str) -> str:
    text = _str(value).strip()
    if text.startswith("udp:"):
        if split_udp(text) is None:
            raise _BadValue(f"expects udp:IP:PORT (port 0..65535), got {text!r}")
        return text
    if text.startswith("unix:"):
        if not text[5:]:
            raise _BadValue("expects udp:IP:PORT or a unix socket path, got 'unix:'")
        return "unix:" + _resolve(text[5:], _dir)
    if text.startswith("/") or (text and ":" not in text):
        return _resolve(text, _dir)
    raise _BadValue(f"expects udp:IP:PORT or a unix socket path, got {text!r}")


def split_udp(socket_name: str) -> tuple[str, int] | None:
    """(host, port) of ``udp:HOST:PORT`` (an IPv6 host may be in brackets),
    or None when it is not of that form."""
    if not socket_name.startswith("udp:"):
        return None
    host, colon, port = socket_name[4:].rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        return None
    return host, int(port)


def _db_url(value: str | int, _dir: str | None = None) -> str | None:
    text = _str(value).strip()
    if not text:
        return None
    try:
        parse_db_url(text, _dir)
    except DbUrlError as exc:
        raise _BadValue(str(exc)) from None
    return text


def _fs_url(value: str | int, _dir: str | None = None) -> str:
    text = _str(value)
    try:
        parsed = fsurl.parse(text)
    except fsurl.UrlError as exc:
        raise _BadValue(f"bad FreeSWITCH URL: {exc}") from None
    if not parsed.password:
        raise _BadValue(f"FreeSWITCH URL {mask_password(text)!r} has no password "
                        "(fs_subscribe needs [user]:password@host[:port][?events])")
    return text


_YES = ("yes", "true", "on", "enable", "1")
_NO = ("no", "false", "off", "disable", "0")


def _mask_url(text: str | None) -> str | None:
    return None if text is None else mask_password(text)


@dataclass(frozen=True)
class _Module:
    settings: type
    params: dict[str, _Converter]
    repeatable: frozenset = frozenset()
    requires: str | None = None


_evi_params = {"queue_size": _ranged(1), "queue_bytes": _ranged(1024),
               "drain_timeout": _ranged(0, 8)}

MODULES: dict[str, _Module] = {
    "freeswitch": _Module(FreeswitchSettings, {
        "event_heartbeat_interval": _ranged(1),
        "esl_connect_timeout": _ranged(1),
        "esl_cmd_timeout": _ranged(1),
        "esl_cmd_polling_itv": _ranged(1),
        "fs_no_esl_timeout": _ranged(1),
        "esl_max_frame_size": _ranged(1024),
        "esl_max_sockets": _ranged(1),
    }),
    "freeswitch_scripting": _Module(ScriptingSettings, {
        "db_url": _db_url,
        "db_table": _name,
        "db_col_username": _name,
        "db_col_password": _name,
        "db_col_ip": _name,
        "db_col_port": _name,
        "db_col_events": _name,
        "fs_subscribe": _fs_url,
        "esl_cmd_max_size": _ranged(16),
        "db_timeout": _ranged(1),
        "ready_max_down": _ranged(0),
    }, repeatable=frozenset({"fs_subscribe"}), requires="freeswitch"),
    "httpd": _Module(HttpdSettings, {
        "ip": _ip,
        "port": _ranged(0, 65535),
        "auth_realm": _str,
        "auth_username": _optional_str,
        "auth_password": _secret,
        "tls_cert_file": _path,
        "tls_key_file": _path,
        "conn_timeout": _ranged(1),
        "max_connections": _ranged(1),
        "probes_auth": _bool,
        "metrics_max_age": _ranged(0, 60000),
    }),
    "mi_http": _Module(MiHttpSettings, {"root": _str}, requires="httpd"),
    "mi_fifo": _Module(MiFifoSettings, {
        "fifo_name": _path,
        "fifo_mode": _mode,
        "reply_dir": _path,
    }),
    "mi_datagram": _Module(MiDatagramSettings, {"socket_name": _datagram_socket}),
    "event_datagram": _Module(EviTransportSettings, dict(_evi_params)),
    "event_stream": _Module(EviTransportSettings, dict(_evi_params)),
    "event_xmlrpc": _Module(EventXmlRpcSettings, dict(_evi_params, use_struct_param=_int)),
    "event_http": _Module(EventHttpSettings, dict(_evi_params, verify_cert=_bool)),
    "event_rabbitmq": _Module(EventRabbitmqSettings, dict(
        _evi_params, heartbeat=_ranged(0, 65535), connect_timeout=_ranged(1),
        timeout=_ranged(0), use_tls=_bool, tls_ca_file=_path, tls_cert_file=_path,
        tls_key_file=_path, verify_cert=_bool)),
}

EVI_MODULES = ("event_datagram", "event_stream", "event_xmlrpc", "event_http", "event_rabbitmq")

IGNORED_MODULES = {
    "db_sqlite": "the db_url scheme picks the SQL driver",
    "db_mysql": "the db_url scheme picks the SQL driver",
    "db_postgres": "the db_url scheme picks the SQL driver",
    "proto_udp": "transports are built in",
    "proto_tcp": "transports are built in",
    "json": "JSON support is built in",
}

_NOT_NONE_WHEN_EMPTY = {"fifo_name", "reply_dir"}


# --------------------------------------------------------------------------
# Tokenizer

@dataclass(frozen=True)
class _Token:
    kind: str       # "str", "int", "word", "punct", "eof"
    value: Any      # str for "str"/"word"/"punct", int for "int", None otherwise
    line: int
    text: str       # as written, for messages


_PUNCT = "(),=;"
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'", "0": "\0"}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_NUMBER = re.compile(r"-?(0[xX][0-9a-fA-F]+|\d+)")


def _tokenize(text: str, file: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch in " \t\r\f\v":
            i += 1
        elif ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ConfigError(file, line, "unterminated /* comment (no closing */)")
            line += text.count("\n", i, end)
            i = end + 2
        elif ch in "\"'":
            token, i, line = _string_token(text, i, line, file)
            tokens.append(token)
        elif ch in _PUNCT:
            tokens.append(_Token("punct", ch, line, ch))
            i += 1
        elif (m := _NUMBER.match(text, i)) and not _WORD.match(text, m.end()):
            written = m.group(0)
            tokens.append(_Token("int", _number(written), line, written))
            i = m.end()
        elif m := _WORD.match(text, i):
            tokens.append(_Token("word", m.group(0), line, m.group(0)))
            i = m.end()
        else:
            # reported by the parser, so that a known word before it can
            # explain itself first (e.g. "route {")
            token = _bad_token(text, i, line)
            tokens.append(token)
            i += len(token.text)
    tokens.append(_Token("eof", None, line, "end of file"))
    return tokens


def _string_token(text: str, i: int, line: int, file: str) -> tuple[_Token, int, int]:
    """The quoted string starting at ``text[i]``: (its token, the index
    after its closing quote, the line there)."""
    quote = text[i]
    start_line = line
    n = len(text)
    j = i + 1
    out = []
    while True:
        if j >= n:
            raise ConfigError(file, start_line, f"unterminated string (no closing {quote})")
        c = text[j]
        if c == quote:
            break
        if c == "\\" and j + 1 < n:
            nxt = text[j + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            line += nxt == "\n"
            j += 2
            continue
        line += c == "\n"
        out.append(c)
        j += 1
    return _Token("str", "".join(out), start_line, text[i:j + 1]), j + 1, line


def _bad_token(text: str, i: int, line: int) -> _Token:
    """What starts at ``text[i]`` when it is no token: up to 20 characters
    before the next space, at least one."""
    end = i
    while end < len(text) and not text[end].isspace() and end - i < 20:
        end += 1
    return _Token("bad", None, line, text[i:max(end, i + 1)])


def _number(written: str) -> int:
    """An integer as OpenSIPS reads it: 0x hex, a leading 0 means octal."""
    sign = -1 if written.startswith("-") else 1
    digits = written.lstrip("-")
    if digits[:2].lower() == "0x":
        return sign * int(digits, 16)
    if len(digits) > 1 and digits.startswith("0") and set(digits) <= set("01234567"):
        return sign * int(digits, 8)
    return sign * int(digits, 10)


# --------------------------------------------------------------------------
# Parser

_STATEMENTS = ("loadmodule, modparam(...), log_level=N, log_stderror=yes|no, "
               "stderror_log_format=..., syslog_log_format=..., include_file")
_GLOBALS = ("log_level, log_stderror, stderror_log_format, syslog_log_format "
            "and evi_queue_bytes (ours)")
_MAX_INCLUDE_DEPTH = 10


# global parameter -> the _Parser method that checks and sets its value
_GLOBAL_SETTERS = {"log_level": "set_log_level", "log_stderror": "set_log_stderror",
                   "stderror_log_format": "set_log_format", "syslog_log_format": "set_log_format",
                   "evi_queue_bytes": "set_evi_queue_bytes"}
_ROUTES = ("route", "startup_route", "timer_route", "event_route", "onreply_route",
           "failure_route", "branch_route", "local_route", "error_route")


class _Parser:
    def __init__(self, config: Config):
        self.config = config
        # module -> (file, line) of its loadmodule
        self.loaded_at: dict[str, tuple[str, int]] = {}
        self.ignored: set[str] = set()
        self.files: list[str] = []

    # -- driver

    def parse_text(self, text: str, file: str) -> None:
        if len(self.files) > _MAX_INCLUDE_DEPTH:
            raise ConfigError(file, None, "include_file nested too deep (loop?)")
        if file in self.files:
            raise ConfigError(file, None, "file includes itself (include loop)")
        self.files.append(file)
        try:
            self.file = file
            self.tokens = _tokenize(text, file)
            self.pos = 0
            while self.peek().kind != "eof":
                self.statement()
        finally:
            self.files.pop()

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def error(self, token: _Token, message: str) -> ConfigError:
        return ConfigError(self.file, token.line, message)

    def expect(self, kind: str, value: str | None = None, what: str = "") -> _Token:
        token = self.take()
        if token.kind != kind or (value is not None and token.value != value):
            wanted = what or (repr(value) if value is not None else kind)
            raise self.error(token, f"expected {wanted}, found {token.text!r}")
        return token

    def end_statement(self) -> None:
        if self.peek().kind == "punct" and self.peek().value == ";":
            self.take()

    # -- statements

    def statement(self) -> None:
        token = self.take()
        if token.kind != "word":
            raise self.error(token, f"unexpected {token.text!r}: expected one of {_STATEMENTS}")
        keyword = token.value
        if keyword == "loadmodule":
            self.loadmodule(token)
        elif keyword == "modparam":
            self.modparam(token)
        elif keyword in _GLOBAL_SETTERS:
            self.expect("punct", "=", f"'=' after {keyword}")
            getattr(self, _GLOBAL_SETTERS[keyword])(keyword, self.take())
        elif keyword in ("include_file", "import_file"):
            self.include(token)
        else:
            raise self.unknown_statement(token)
        self.end_statement()

    def set_log_level(self, keyword: str, value: _Token) -> None:
        if value.kind not in ("int", "word", "str"):
            raise self.error(value, f"bad log_level {value.text!r}: expected {LOG_LEVEL_HELP}")
        try:
            self.config.log_level = parse_log_level(value.value)
        except ValueError as exc:
            raise self.error(value, str(exc)) from None

    def set_log_stderror(self, keyword: str, value: _Token) -> None:
        written = str(value.value).lower() if value.kind in ("word", "int", "str") else None
        if written in _YES:
            self.config.log_stderror = True
        elif written in _NO:
            self.config.log_stderror = False
        else:
            raise self.error(value, f"bad log_stderror {value.text!r}: expected yes or no")

    def set_log_format(self, keyword: str, value: _Token) -> None:
        written = value.value if value.kind in ("word", "str") else None
        if written not in LOG_FORMATS:
            raise self.error(value, f"bad {keyword} {value.text!r}: expected "
                             f"{', '.join(repr(f) for f in LOG_FORMATS)}")
        setattr(self.config, keyword, written)

    def set_evi_queue_bytes(self, keyword: str, value: _Token) -> None:
        if value.kind != "int" or not isinstance(value.value, int) or value.value < 1024:
            raise self.error(value, f"bad evi_queue_bytes {value.text!r}: "
                             "expected a number of bytes, at least 1024")
        self.config.evi_queue_bytes = value.value

    def unknown_statement(self, token: _Token) -> ConfigError:
        keyword = token.value
        if self.peek().kind == "punct" and self.peek().value == "=":
            return self.error(token, f"unknown global parameter {keyword!r}: opensips-fs "
                              f"understands {_GLOBALS}")
        if self.peek().kind == "punct" and self.peek().value == "(" or keyword in _ROUTES:
            return self.error(token, f"{keyword!r} is not supported: opensips-fs reads only "
                              f"{_STATEMENTS}")
        return self.error(token, f"unknown statement {keyword!r}: expected one of {_STATEMENTS}")

    def loadmodule(self, keyword: _Token) -> None:
        token = self.expect("str", what='a quoted module name, e.g. loadmodule "httpd.so"')
        base = os.path.basename(token.value.strip())
        name = base[:-3] if base.endswith(".so") else base
        if not name:
            raise self.error(token, "empty module name in loadmodule")
        if name in self.loaded_at or name in self.ignored:
            self.note(token, f'module "{name}" loaded twice, second loadmodule ignored')
            return
        if name in IGNORED_MODULES:
            self.ignored.add(name)
            self.note(token, f'loadmodule "{base}" ignored: {IGNORED_MODULES[name]}')
            return
        if name not in MODULES:
            raise self.error(token, f'unknown module "{name}": opensips-fs implements '
                             f"{', '.join(MODULES)} (and ignores {', '.join(IGNORED_MODULES)})"
                             + _suggest(name, list(MODULES) + list(IGNORED_MODULES)))
        self.loaded_at[name] = (self.file, token.line)
        self.config.loaded.append(name)
        setattr(self.config, name, MODULES[name].settings())

    def modparam(self, keyword: _Token) -> None:
        self.expect("punct", "(", "'(' after modparam")
        module_token = self.expect("str", what="a quoted module name")
        self.expect("punct", ",", "',' after the module name")
        param_token = self.expect("str", what="a quoted parameter name")
        self.expect("punct", ",", "',' after the parameter name")
        value_token = self.take()
        if value_token.kind not in ("str", "int"):
            raise self.error(value_token, f"bad modparam value {value_token.text!r}: "
                             "expected a quoted string or an integer")
        self.expect("punct", ")", "')' closing modparam")

        module, param, value = module_token.value, param_token.value, value_token.value
        if module in self.ignored:
            self.note(module_token, f'modparam("{module}", "{param}") ignored: '
                      f'module "{module}" is not used by opensips-fs')
            return
        spec = MODULES.get(module)
        if spec is None:
            if module in IGNORED_MODULES:
                raise self.error(module_token, f'modparam of module "{module}", which is not '
                                 f'loaded: add loadmodule "{module}.so" first')
            raise self.error(module_token, f'unknown module "{module}" in modparam: opensips-fs '
                             f"implements {', '.join(MODULES)}" + _suggest(module, list(MODULES)))
        if module not in self.loaded_at:
            raise self.error(module_token, f'modparam of module "{module}", which is not loaded: '
                             f'add loadmodule "{module}.so" before it')
        converter = spec.params.get(param)
        if converter is None:
            raise self.error(param_token, f'module "{module}" has no parameter "{param}": valid '
                             f"parameters are {', '.join(spec.params)}"
                             + _suggest(param, list(spec.params)))
        try:
            typed = converter(value, os.path.dirname(self.file))
        except _BadValue as exc:
            raise self.error(value_token, f'modparam("{module}", "{param}"): {exc}') from None
        if typed is None and param in _NOT_NONE_WHEN_EMPTY:
            raise self.error(value_token, f'modparam("{module}", "{param}"): must not be empty')
        settings = getattr(self.config, module)
        if param in spec.repeatable:
            getattr(settings, param).append(SubscribeParam(typed, self.file, value_token.line))
        else:
            setattr(settings, param, typed)

    def include(self, keyword: _Token) -> None:
        token = self.expect("str", what=f'a quoted file name after {keyword.value}')
        path = os.path.normpath(os.path.join(os.path.dirname(self.file), token.value))
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(token, f"cannot read included file {path!r}: {short_reason(exc)}") from None
        saved = self.file, self.tokens, self.pos
        try:
            self.parse_text(text, path)
        finally:
            self.file, self.tokens, self.pos = saved

    def note(self, token: _Token, message: str) -> None:
        self.config.notes.append(f"{self.file}:{token.line}: {message}")

    # -- after the last statement

    def finish(self) -> None:
        for module, (file, line) in self.loaded_at.items():
            needed = MODULES[module].requires
            if needed and needed not in self.loaded_at:
                raise ConfigError(file, line, f'module "{module}" needs module "{needed}": '
                                  f'add loadmodule "{needed}.so"')


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


# --------------------------------------------------------------------------
# Entry points

def loads(text: str, path: str) -> Config:
    """Parse config ``text`` as if read from ``path`` (relative paths resolve
    against its folder)."""
    path = os.path.abspath(path)
    config = Config(path=path, dir=os.path.dirname(path))
    parser = _Parser(config)
    parser.parse_text(text, path)
    parser.finish()
    return config


def load(path: str | os.PathLike[str]) -> Config:
    """Read and parse the config file at ``path``; raises `ConfigError`."""
    shown = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except IsADirectoryError:
        raise ConfigError(shown, None, "cannot read config file: it is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(shown, None, f"cannot read config file: {short_reason(exc)}") from None
    return loads(text, shown)


def settings_fields(module: str) -> list[tuple[str, object]]:
    """(param, default) for each parameter of ``module``, for documentation."""
    spec = MODULES[module]
    defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                for f in fields(spec.settings)}
    return [(name, defaults.get(name)) for name in spec.params]

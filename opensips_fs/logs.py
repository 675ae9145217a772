"""Logging with OpenSIPS's levels and line format.

OpenSIPS levels: -3 alert, -2 crit, -1 error, 1 warn, 2 notice, 3 info,
4 debug (0 is unused and behaves like -1). Setting level N shows every message
whose level is N or lower. They map onto Python logging levels, with NOTICE
(25) and ALERT (55) added, so rooms simply use ``logging.getLogger(__name__)``.

A line on stderr reads like OpenSIPS's::

    Nov 26 14:30:47 [2427] INFO:freeswitch:connect: connected to 127.0.0.1:8021

(time, pid, level, the OpenSIPS module the code stands in for, the function).
With ``log_stderror=no`` lines go to syslog (``/dev/log``) as OpenSIPS does.

OpenSIPS's core parameters ``stderror_log_format`` and ``syslog_log_format``
pick ``plain_text`` (the line above), ``json`` or ``json_cee``: one JSON
object a line with OpenSIPS's keys, in its order, with its separators and
escaping (`JsonFormatter`), so a log shipper set up for OpenSIPS reads ours
unchanged. The message keeps the trailing ``\n`` OpenSIPS's messages have;
syslog ``json_cee`` lines start with ``@cee: ``.

Peer-supplied values are bounded: every string, bytes or exception argument
of a log call is cut to `MAX_ARG_CHARS` (a note says how long it was), and a
whole message to `MAX_MESSAGE_CHARS`. A line that repeats — the same call
site about the same subject (its non-numeric arguments) — is rate-limited by
`RepeatFilter`: a few pass, then one per `REPEAT_WINDOW` seconds, carrying
the number of lines held back.

Passwords never reach a log line: the formatter masks the password part of
every ``user:pass@host`` URL it sees and every secret registered with
`register_secret` (credentials learnt from the config, the DB or MI). Rooms
must still never log a secret; this is the safety net.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import overload

__all__ = [
    "ALERT", "LOG_FORMATS", "MAX_ARG_CHARS", "MAX_MESSAGE_CHARS", "NOTICE", "RepeatFilter",
    "bounded", "OPENSIPS_TO_PYTHON", "JsonFormatter", "OpenSipsFormatter",
    "get_level", "json_escape", "log_time", "mask_password", "module_of", "register_secret",
    "scrub", "set_level", "setup", "url_password",
]

NOTICE = 25
ALERT = 55
logging.addLevelName(NOTICE, "NOTICE")
logging.addLevelName(ALERT, "ALERT")

# OpenSIPS level -> the Python threshold that shows exactly those messages.
OPENSIPS_TO_PYTHON = {
    -3: ALERT, -2: logging.CRITICAL, -1: logging.ERROR, 0: logging.ERROR,
    1: logging.WARNING, 2: NOTICE, 3: logging.INFO, 4: logging.DEBUG,
}
_LEVEL_TAGS = {
    ALERT: "ALERT", logging.CRITICAL: "CRITICAL", logging.ERROR: "ERROR",
    logging.WARNING: "WARNING", NOTICE: "NOTICE", logging.INFO: "INFO",
    logging.DEBUG: "DBG",
}

# Logger name prefix -> the OpenSIPS module name shown in the line.
_MODULE_OF = (
    ("opensips_fs.esl", "freeswitch"),
    ("opensips_fs.scripting", "freeswitch_scripting"),
    ("opensips_fs.db", "freeswitch_scripting"),
    ("opensips_fs.mi.http", "mi_http"),
    ("opensips_fs.mi.fifo", "mi_fifo"),
    ("opensips_fs.mi.datagram", "mi_datagram"),
    ("opensips_fs.evi.datagram", "event_datagram"),
    ("opensips_fs.evi.stream", "event_stream"),
    ("opensips_fs.evi.xmlrpc", "event_xmlrpc"),
    ("opensips_fs.evi.http", "event_http"),
    ("opensips_fs.evi.rabbitmq", "event_rabbitmq"),
    ("opensips_fs.sim", "sim"),
    ("opensips_fs", "core"),
)

_ROOT = "opensips_fs"
_level = 2
_secrets: set[str] = set()
_secret_pattern: re.Pattern | None = None
_MIN_SECRET = 3

# user:password@ in URLs, with or without a scheme (FreeSWITCH URLs allow
# ":password@host"); the password stops at the last @ before the host, so a
# password holding `@` or `/` is masked whole.
_URL_CREDENTIALS = re.compile(
    r"(?P<head>(?:\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s:/@'\"]*|(?<![\w:/@.\-])[\w.\-]*)"
    r":(?P<pwd>(?!//)[^\s'\"]+)@(?=[\w\[])")


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the password of `[scheme://][user]:password@rest` lies in `url`:
    after the first `:` of the user part, up to the last `@` (how db_url
    parsing reads it: a password may hold `@`, `/` or `:`)."""
    at = url.rfind("@")
    if at < 0:
        return None
    scheme_end = url.find("://", 0, at)   # a "://" after the credentials is no scheme
    colon = url.find(":", scheme_end + 3 if scheme_end >= 0 else 0, at)
    return (colon + 1, at) if colon >= 0 else None


def url_password(url: str) -> str | None:
    """The password written in `url` (`[scheme://][user]:password@…`), or None."""
    span = _password_span(url)
    return url[span[0]:span[1]] if span else None


def mask_password(url: str) -> str:
    """`url` with its password replaced by `***`, for log lines and errors."""
    span = _password_span(url)
    return f"{url[:span[0]]}***{url[span[1]:]}" if span else url


def register_secret(secret: str | None) -> None:
    """Mask ``secret`` in every future log line (too-short secrets are skipped:
    masking them would mangle ordinary words)."""
    global _secret_pattern
    if not secret or len(secret) < _MIN_SECRET or secret in _secrets:
        return
    _secrets.add(secret)
    ordered = sorted(_secrets, key=len, reverse=True)
    _secret_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def scrub(text: str) -> str:
    """``text`` with URL passwords and registered secrets replaced by ``***``."""
    if "@" in text:
        text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('head')}:***@", text)
    if _secret_pattern is not None:
        text = _secret_pattern.sub("***", text)
    return text


def log_time(created: float) -> str:
    """``Mon DD HH:MM:SS`` as OpenSIPS prints it (ctime's, day padded with a
    space: ``Dec  3 12:48:39``)."""
    return time.ctime(created)[4:19]


MAX_ARG_CHARS = 512          # one argument of a log call (an event name, a URL, a reason…)
MAX_MESSAGE_CHARS = 16384    # a whole message, traceback included


@overload
def bounded(value: str, limit: int = MAX_ARG_CHARS) -> str: ...
@overload
def bounded(value: object, limit: int = MAX_ARG_CHARS) -> object: ...


def bounded(value: object, limit: int = MAX_ARG_CHARS) -> object:
    """`value` cut to `limit` characters when it is text, bytes or an
    exception (what a peer can make arbitrarily long); other values as is."""
    if isinstance(value, BaseException):
        text = str(value)
        return value if len(text) <= limit else _cut(text, limit)
    if isinstance(value, (str, bytes, bytearray)) and len(value) > limit:
        return _cut(value, limit)
    return value


@overload
def _cut(value: str, limit: int) -> str: ...
@overload
def _cut(value: bytes | bytearray, limit: int) -> bytes | bytearray: ...


def _cut(value: str | bytes | bytearray, limit: int) -> str | bytes | bytearray:
    if isinstance(value, str):
        return value[:limit] + f"...[{len(value)} chars, cut]"
    return value[:limit] + f"...[{len(value)} bytes, cut]".encode()


def _get_message(record: logging.LogRecord) -> str:
    args = record.args
    if args:
        if isinstance(args, tuple):
            args = tuple(bounded(a) for a in args)
        elif isinstance(args, dict):
            args = {k: bounded(v) for k, v in args.items()}
        message = str(record.msg) % args
    else:
        message = str(record.msg)
    if len(message) > MAX_MESSAGE_CHARS:
        message = _cut(message, MAX_MESSAGE_CHARS)
    return message


def _message(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    message = _get_message(record)
    held = getattr(record, "held_back", 0)
    if held:
        message = f"{message} ({held} similar line(s) held back)"
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        message = f"{message}\n{record.exc_text}"
    return message


def _level_tag(levelno: int) -> str:
    return _LEVEL_TAGS.get(levelno) or _nearest_tag(levelno)


class OpenSipsFormatter(logging.Formatter):
    """``Mon DD HH:MM:SS [pid] LEVEL:module:function: message``, scrubbed."""

    def __init__(self, with_time: bool = True):
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        message = _message(self, record)
        line = (f"[{record.process}] {_level_tag(record.levelno)}:{module_of(record.name)}:"
                f"{record.funcName}: {message}")
        if self.with_time:
            line = f"{log_time(record.created)} {line}"
        return scrub(line)


# OpenSIPS escapes \ " \b \f \n \r \t with a backslash and any other
# control character as \u00XX (lower-case hex); everything else is copied.
_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)}
_JSON_ESCAPES.update({ord("\\"): "\\\\", ord('"'): '\\"', ord("\b"): "\\b",
                      ord("\f"): "\\f", ord("\n"): "\\n", ord("\r"): "\\r",
                      ord("\t"): "\\t"})


def json_escape(text: str) -> str:
    """`text` as the inside of a JSON string, escaped as OpenSIPS escapes it."""
    return text.translate(_JSON_ESCAPES)


LOG_FORMATS = ("plain_text", "json", "json_cee")


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with OpenSIPS's keys and layout.

    ``json``::

        {"time": "Dec  3 12:48:39", "pid": 29404, "level": "INFO", "module": "core",
         "function": "main", "message": "text\\n"}

    ``json_cee`` (``"@cee: "`` in front for syslog)::

        {"time": "…", "proc": {"id": "29404"}, "pri": "INFO", "subsys": "core",
         "native": {"function": "main"}, "msg": "text\\n", "pname": "opensips-fs",
         "hostname": "vm"}
    """

    def __init__(self, schema: str = "json", syslog: bool = False,
                 hostname: str | None = None, pname: str = "opensips-fs"):
        super().__init__()
        if schema not in ("json", "json_cee"):
            raise ValueError(f"unknown JSON log schema {schema!r}")
        self.cee = schema == "json_cee"
        self.prefix = "@cee: " if self.cee and syslog else ""
        self.hostname = json_escape(canonical_hostname() if hostname is None else hostname)
        self.pname = json_escape(pname)

    def format(self, record: logging.LogRecord) -> str:
        message = json_escape(scrub(_message(self, record)) + "\n")
        level = _level_tag(record.levelno)
        module = json_escape(module_of(record.name))
        function = json_escape(record.funcName or "")
        when = log_time(record.created)
        if self.cee:
            return (f'{self.prefix}{{"time": "{when}", "proc": {{"id": "{record.process}"}}, '
                    f'"pri": "{level}", "subsys": "{module}", "native": {{"function": '
                    f'"{function}"}}, "msg": "{message}", "pname": "{self.pname}", '
                    f'"hostname": "{self.hostname}"}}')
        return (f'{{"time": "{when}", "pid": {record.process}, "level": "{level}", '
                f'"module": "{module}", "function": "{function}", "message": "{message}"}}')


def canonical_hostname() -> str:
    """The host's canonical name, as OpenSIPS puts it in ``json_cee`` lines
    (getaddrinfo's AI_CANONNAME of gethostname(); empty when unresolvable)."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, None, 0, socket.SOCK_STREAM, 0, socket.AI_CANONNAME)
    except OSError:
        return ""
    return infos[0][3] if infos and infos[0][3] else ""


REPEAT_BURST = 3          # lines of one kind that pass before the limit applies
REPEAT_WINDOW = 60.0      # s; then at most one line of that kind per window
_MAX_KINDS = 4096         # kinds remembered (least recently seen forgotten first)


class RepeatFilter(logging.Filter):
    """Rate-limits a log line that repeats. Its kind is the call site
    (logger, line) and its subject (the non-numeric arguments, bounded):
    `REPEAT_BURST` lines pass, then one per `REPEAT_WINDOW` seconds, which
    says how many were held back. CRITICAL and ALERT always pass."""

    def __init__(self, burst: int = REPEAT_BURST, window: float = REPEAT_WINDOW,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.burst = burst
        self.window = window
        self.clock = clock
        self._kinds: OrderedDict = OrderedDict()   # kind -> [window start, count, held]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        kind = (record.name, record.lineno, _subject(record.args))
        now = self.clock()
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= self.window:
            held = state[2] if state is not None else 0
            self._kinds[kind] = [now, 1, 0]
            self._kinds.move_to_end(kind)
            if len(self._kinds) > _MAX_KINDS:
                self._kinds.popitem(last=False)
            if held:
                record.held_back = held
            return True
        state[1] += 1
        if state[1] <= self.burst:
            return True
        state[2] += 1
        return False


def _subject(args: object) -> tuple[str, ...]:
    if not isinstance(args, tuple):
        return ()
    return tuple(str(bounded(a, 128)) for a in args
                 if not isinstance(a, (int, float)) or isinstance(a, bool))


def _formatter(log_format: str, syslog: bool) -> logging.Formatter:
    if log_format == "plain_text":
        return OpenSipsFormatter(with_time=not syslog)
    return JsonFormatter(log_format, syslog=syslog)


def _nearest_tag(levelno: int) -> str:
    for number in sorted(_LEVEL_TAGS, reverse=True):
        if levelno >= number:
            return _LEVEL_TAGS[number]
    return "DBG"


def module_of(logger_name: str) -> str:
    for prefix, module in _MODULE_OF:
        if logger_name == prefix or logger_name.startswith(prefix + "."):
            return module
    return logger_name


def setup(level: int = 2, stderror: bool = True, stderror_format: str = "plain_text",
          syslog_format: str = "plain_text", syslog_address: str = "/dev/log") -> None:
    """Send opensips-fs log lines to stderr (or syslog when ``stderror`` is
    false and ``syslog_address`` exists) at OpenSIPS ``level``, each in its
    format (one of `LOG_FORMATS`). Idempotent."""
    for log_format in (stderror_format, syslog_format):
        if log_format not in LOG_FORMATS:
            raise ValueError(f"unknown log format {log_format!r}: valid are {', '.join(LOG_FORMATS)}")
    logger = logging.getLogger(_ROOT)
    for old in list(logger.handlers):
        if getattr(old, "_opensips_fs", False):
            logger.removeHandler(old)
            old.close()
    handler: logging.Handler
    if not stderror and os.path.exists(syslog_address):
        handler = logging.handlers.SysLogHandler(
            address=syslog_address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(_formatter(syslog_format, syslog=True))
        # the syslog tag; a JSON body must not be glued to it
        handler.ident = "opensips-fs" if syslog_format == "plain_text" else f"opensips-fs[{os.getpid()}]: "
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_formatter(stderror_format, syslog=False))
    setattr(handler, "_opensips_fs", True)  # marks the handlers setup() owns
    logger.addHandler(handler)
    logger.propagate = False
    set_level(level)


def set_level(level: int) -> None:
    """Set the global OpenSIPS log level (any integer; clamped to -3..4)."""
    global _level
    _level = int(level)
    clamped = max(-3, min(4, _level))
    logging.getLogger(_ROOT).setLevel(OPENSIPS_TO_PYTHON[clamped])


def get_level() -> int:
    """The current OpenSIPS log level, as last set."""
    return _level

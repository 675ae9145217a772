"""FreeSWITCH events as the simulator builds and serialises them (docs/protocols/esl.md §6).

An ``Event`` is an ordered list of ``(name, value)`` string headers plus an
optional body, exactly like ``switch_event_t``. ``Event.frame(fmt)`` gives
the complete ESL frame for ``json``, ``plain`` or ``xml`` (cached, so every
subscriber of one event shares the same bytes):

* JSON: one compact object, all values strings, cJSON escaping, the body as
  ``"Content-Length":"<n>"`` then ``"_body"``; duplicate keys kept;
* plain: ``Name: value\\n`` lines with values URL-encoded as FreeSWITCH does
  (``url_encode``), a blank line, then ``Content-Length: <n>`` + body when
  there is one (nested inside the frame);
* XML: ``<event>`` / ``<headers>`` with two-space indentation, values
  URL-encoded; a body as ``<Content-Length>`` and ``<body>`` after
  ``<headers>`` (switch_event_xmlize).

``Identity`` holds what a FreeSWITCH box stamps on every event (Core-UUID,
host names, addresses, version) and builds the common header block.
"""

from __future__ import annotations

import re
import time
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from ..jsonenc import dumps_str

__all__ = [
    "Event", "Identity", "url_encode", "json_body", "plain_body", "xml_body",
    "frame", "date_headers", "EVENT_NAMES", "is_event_name", "FsVersion", "VERSIONS",
]

# switch_event_types_t names (switch_event.c EVENT_NAMES), ALL last.
EVENT_NAMES = (
    "CUSTOM CLONE CHANNEL_CREATE CHANNEL_DESTROY CHANNEL_STATE CHANNEL_CALLSTATE "
    "CHANNEL_ANSWER CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CHANNEL_EXECUTE "
    "CHANNEL_EXECUTE_COMPLETE CHANNEL_HOLD CHANNEL_UNHOLD CHANNEL_BRIDGE "
    "CHANNEL_UNBRIDGE CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_OUTGOING "
    "CHANNEL_PARK CHANNEL_UNPARK CHANNEL_APPLICATION CHANNEL_ORIGINATE "
    "CHANNEL_UUID API LOG INBOUND_CHAN OUTBOUND_CHAN STARTUP SHUTDOWN PUBLISH "
    "UNPUBLISH TALK NOTALK SESSION_CRASH MODULE_LOAD MODULE_UNLOAD DTMF MESSAGE "
    "PRESENCE_IN NOTIFY_IN PRESENCE_OUT PRESENCE_PROBE MESSAGE_WAITING "
    "MESSAGE_QUERY ROSTER CODEC BACKGROUND_JOB DETECTED_SPEECH DETECTED_TONE "
    "PRIVATE_COMMAND HEARTBEAT TRAP ADD_SCHEDULE DEL_SCHEDULE EXE_SCHEDULE "
    "RE_SCHEDULE RELOADXML NOTIFY PHONE_FEATURE PHONE_FEATURE_SUBSCRIBE "
    "SEND_MESSAGE RECV_MESSAGE REQUEST_PARAMS CHANNEL_DATA GENERAL COMMAND "
    "SESSION_HEARTBEAT CLIENT_DISCONNECTED SERVER_DISCONNECTED SEND_INFO "
    "RECV_INFO RECV_RTCP_MESSAGE SEND_RTCP_MESSAGE CALL_SECURE NAT RECORD_START "
    "RECORD_STOP PLAYBACK_START PLAYBACK_STOP CALL_UPDATE FAILURE SOCKET_DATA "
    "MEDIA_BUG_START MEDIA_BUG_STOP CONFERENCE_DATA_QUERY CONFERENCE_DATA "
    "CALL_SETUP_REQ CALL_SETUP_RESULT CALL_DETAIL DEVICE_STATE TEXT "
    "SHUTDOWN_REQUESTED ALL"
).split()
_EVENT_SET = frozenset(EVENT_NAMES)


def is_event_name(name: str) -> str | None:
    """The canonical (upper-case) event name, or None if FreeSWITCH has none
    of that name (case-insensitive, like ``switch_name_event``)."""
    upper = name.upper()
    return upper if upper in _EVENT_SET else None


# --- URL encoding (switch_url_encode as observed, docs/protocols/esl.md §6.3) -------------

_UNSAFE = set(range(0, 0x20)) | set(range(0x7F, 0x100)) | set(b' #%&+:;<=>?@[\\]^`{|}"')
_ENCODE_RE = re.compile(
    b"%(?![0-9A-F]{2})|[" + b"".join(b"\\x%02x" % c for c in sorted(_UNSAFE) if c != 0x25) + b"]"
)
_HEX = [b"%%%02X" % c for c in range(256)]


def _encode_match(m: re.Match) -> bytes:
    return _HEX[m.group()[0]]


def url_encode(value: str) -> str:
    """FreeSWITCH's header-value URL encoding (upper-case ``%XX`` already in
    the value is kept as is, the quirk that makes plain format lossy)."""
    raw = value.encode("utf-8", "surrogateescape")
    if _ENCODE_RE.search(raw) is None:
        return value
    return _ENCODE_RE.sub(_encode_match, raw).decode("ascii")


# --- dates ----------------------------------------------------------------

_WDAY = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MON = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


_date_cache: list = [None, "", ""]  # [second, local, GMT]: formatted once per second


def date_headers(now: float) -> list:
    """Event-Date-Local, Event-Date-GMT (RFC 1123), Event-Date-Timestamp (µs)."""
    secs = int(now)
    cache = _date_cache
    if cache[0] != secs:
        lt = time.localtime(secs)
        gt = time.gmtime(secs)
        cache[1] = "%04d-%02d-%02d %02d:%02d:%02d" % lt[:6]
        cache[2] = "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
            _WDAY[gt.tm_wday], gt.tm_mday, _MON[gt.tm_mon - 1], gt.tm_year, gt.tm_hour, gt.tm_min, gt.tm_sec)
        cache[0] = secs
    return [
        ("Event-Date-Local", cache[1]),
        ("Event-Date-GMT", cache[2]),
        ("Event-Date-Timestamp", str(int(now * 1_000_000))),
    ]


# --- serialisation ----------------------------------------------------------

def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def json_body(headers: Iterable[tuple[str, str]], body: str | None) -> bytes:
    """Compact JSON object of the headers (duplicates kept, in order), then
    ``Content-Length`` and ``_body`` when there is a body."""
    pairs = list(headers)
    if body is not None:
        pairs.append(("Content-Length", str(len(_enc(body)))))
        pairs.append(("_body", body))
    try:
        whole = dict(pairs)
        if len(whole) == len(pairs):  # no repeated key: one C call
            return orjson.dumps(whole)
        # repeated keys: one orjson call per run of distinct keys
        chunks: list[bytes] = []
        run: dict[str, str] = {}
        for key, value in pairs:
            if key in run:
                chunks.append(orjson.dumps(run)[1:-1])
                run = {}
            run[key] = value
        chunks.append(orjson.dumps(run)[1:-1])
        return b"{" + b",".join(chunks) + b"}"
    except TypeError:
        # lone surrogates (bytes that were not UTF-8): the exact slow path
        return b"{" + b",".join(dumps_str(k) + b":" + dumps_str(v) for k, v in pairs) + b"}"


def plain_body(headers: Iterable[tuple[str, str]], body: str | None) -> bytes:
    lines = [_enc(k) + b": " + url_encode(v).encode("ascii") + b"\n" for k, v in headers if v != ""]
    if body is not None:
        raw = _enc(body)
        lines.append(b"Content-Length: %d\n\n" % len(raw))
        lines.append(raw)
    else:
        lines.append(b"\n")
    return b"".join(lines)


def _xml_text(text: bytes) -> bytes:
    return text.replace(b"&", b"&amp;").replace(b"<", b"&lt;").replace(b">", b"&gt;")


def xml_body(headers: Iterable[tuple[str, str]], body: str | None) -> bytes:
    """switch_event_xmlize: the headers, then (when there is a body) a
    ``Content-Length`` element and ``<body>`` beside ``<headers>``."""
    out = [b"<event>\n  <headers>\n"]
    for k, v in headers:
        name = _enc(k)
        out.append(b"    <" + name + b">" + url_encode(v).encode("ascii") + b"</" + name + b">\n")
    out.append(b"  </headers>\n")
    raw = _enc(body) if body else b""
    if raw:
        out.append(b"  <Content-Length>%d</Content-Length>\n" % len(raw))
        out.append(b"  <body>" + _xml_text(raw) + b"</body>\n")
    out.append(b"</event>\n")
    return b"".join(out)


_CTYPE = {"json": b"text/event-json", "plain": b"text/event-plain", "xml": b"text/event-xml"}
_SERIALIZE = {"json": json_body, "plain": plain_body, "xml": xml_body}


def frame(fmt: str, payload: bytes) -> bytes:
    """An event frame: Content-Length first, then Content-Type (docs/protocols/esl.md §1.1)."""
    return b"Content-Length: %d\nContent-Type: %s\n\n%s" % (len(payload), _CTYPE[fmt], payload)


@dataclass(eq=False)
class Event:
    """One FreeSWITCH event: ordered headers, optional body, cached frames."""

    name: str
    headers: list
    body: str | None = None
    subclass: str | None = None
    seq: int | None = None  # its Event-Sequence, when the box numbered it
    _frames: dict = field(default_factory=dict, repr=False)
    _index: dict | None = field(default=None, repr=False)

    def get(self, name: str) -> str | None:
        """First value of a header, by case-insensitive name."""
        if self._index is None:
            index: dict[str, str] = {}
            for k, v in self.headers:
                index.setdefault(k.lower(), v)
            self._index = index
        return self._index.get(name.lower())

    def frame(self, fmt: str) -> bytes:
        data = self._frames.get(fmt)
        if data is None:
            data = frame(fmt, _SERIALIZE[fmt](self.headers, self.body))
            self._frames[fmt] = data
        return data


@dataclass(frozen=True)
class FsVersion:
    """How one FreeSWITCH build names itself."""

    full: str  # FreeSWITCH-Version header
    line: str  # ``api version`` output, without the newline
    human: str  # ``api status``: "FreeSWITCH (Version <human>) is ready"
    heartbeat_line: int  # Event-Calling-Line-Number of HEARTBEAT


VERSIONS = {
    # the recorded FreeSWITCH (golden/freeswitch)
    "1.11.3-dev": FsVersion("1.11.3-dev~64bit", "FreeSWITCH Version 1.11.3-dev~64bit ( 64bit)",
                            "1.11.3-dev  64bit", 95),
    # what the OpenSIPS recordings' stand-ins announced (golden/opensips)
    "1.10.12-release": FsVersion("1.10.12-release~64bit",
                                 "FreeSWITCH Version 1.10.12-release~64bit (-release 64bit)",
                                 "1.10.12 -release 64bit", 76),
}


@dataclass
class Identity:
    """What one simulated FreeSWITCH box stamps on its events."""

    hostname: str = "vm"
    core_uuid: str = ""
    ipv4: str = "127.0.0.1"
    ipv6: str = "::1"
    switchname: str | None = None
    fs: FsVersion = VERSIONS["1.11.3-dev"]

    @property
    def version(self) -> str:
        return self.fs.full

    def __post_init__(self) -> None:
        if not self.core_uuid:
            self.core_uuid = str(uuidlib.uuid4())
        if self.switchname is None:
            self.switchname = self.hostname

    def common(self, name: str, now: float, seq: int, calling: tuple[str, str, int]) -> list:
        """The header block every event starts with (docs/protocols/esl.md §6.5)."""
        file, func, line = calling
        return [
            ("Event-Name", name),
            ("Core-UUID", self.core_uuid),
            ("FreeSWITCH-Hostname", self.hostname),
            ("FreeSWITCH-Switchname", self.switchname),
            ("FreeSWITCH-IPv4", self.ipv4),
            ("FreeSWITCH-IPv6", self.ipv6),
            *date_headers(now),
            ("Event-Calling-File", file),
            ("Event-Calling-Function", func),
            ("Event-Calling-Line-Number", str(line)),
            ("Event-Sequence", str(seq)),
        ]

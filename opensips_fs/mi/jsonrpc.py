"""Sans-IO JSON-RPC 2.0 request parsing and reply encoding, OpenSIPS style.

Supports: one JSON-RPC 2.0 request per body, exactly as OpenSIPS 4.1 reads
it (docs/protocols/mi.md §1, §3) — the *first* JSON value of the body (anything after it is
ignored), every byte <= 0x20 counting as whitespace between tokens, raw
control characters accepted inside strings, the first of duplicated members
winning, envelope members looked up case-insensitively, NaN/Infinity
rejected, batches rejected, ids echoed with OpenSIPS's truncation and 32-bit
saturation, strings cut at an embedded NUL (C strings). Bodies that are not
UTF-8 round-trip byte for byte (``surrogateescape``).

Goals: fast on the common path (the C JSON scanner does all the work; the
envelope check is a handful of dict lookups), linear in the worst case (no
step rescans the input; the control-character pass is one regex sweep).

Plan: `parse_request(body)` returns a `Request` or raises `RequestError`
carrying the exact reply bytes (-32700 / -32600). `encode_success`,
`encode_error` build reply bytes with OpenSIPS's member order. Dispatching
the method is not done here (see `registry.MiRegistry`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from .. import jsonenc

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "INVALID_REQUEST_NULL_ID",
    "NOTIFICATION",
    "PARSE_ERROR_REPLY",
    "JsonObject",
    "Request",
    "RequestError",
    "c_string",
    "encode_error",
    "encode_id",
    "encode_success",
    "number_to_int",
    "parse_request",
]

INT_MIN, INT_MAX = -(2 ** 31), 2 ** 31 - 1

NOTIFICATION = object()  # id of a request that had no `id` member

PARSE_ERROR_REPLY = b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}'
INVALID_REQUEST_NULL_ID = (
    b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}'
)


class JsonObject(dict):
    """A JSON object that had duplicated members: the first value of each name
    is kept (cJSON lookup), `member_count` is the number of members on the
    wire (cJSON's array size, which recipe matching counts)."""

    member_count: int = 0


def member_count(obj: dict) -> int:
    return obj.member_count if type(obj) is JsonObject else len(obj)


def _first_member_wins(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    first = JsonObject()
    for key, value in pairs:
        first.setdefault(key, value)
    first.member_count = len(pairs)
    return first


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _parse_int(text: str) -> int | float:
    # Python refuses int() of more than 4300 digits; cJSON reads a double.
    return int(text) if len(text) < 400 else float(text)


_DECODER = json.JSONDecoder(
    strict=False,
    object_pairs_hook=_first_member_wins,
    parse_constant=_reject_constant,
    parse_int=_parse_int,
)
_LEADING_SPACE_CHARS = "".join(map(chr, range(0x21)))   # cJSON skips every byte <= 0x20
# Control characters other than the four JSON whitespaces.
_OTHER_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# Quotes, backslashes and runs of control bytes: the only characters the
# control-character pass needs to look at.
_SPECIAL = re.compile(r'["\\]|[\x00-\x08\x0b\x0c\x0e-\x1f]+')


def _controls_to_spaces(text: str) -> str:
    """Turn control bytes *between* tokens into spaces (cJSON skips every
    byte <= 0x20 there); those inside strings stay (strict=False). One
    linear sweep over the special characters."""
    out = []
    last = 0
    in_string = False
    escaped_until = -1
    for match in _SPECIAL.finditer(text):
        start = match.start()
        if start < escaped_until:
            continue
        token = match.group()
        if token == '"':
            in_string = not in_string
        elif token == "\\":
            if in_string:
                escaped_until = start + 2
        elif not in_string:
            out.append(text[last:start])
            out.append(" " * len(token))
            last = match.end()
    out.append(text[last:])
    return "".join(out)


def decode_first_value(text: str) -> Any:
    """The first JSON value of `text`; raises ValueError if there is none."""
    start = len(text) - len(text.lstrip(_LEADING_SPACE_CHARS))
    try:
        return _DECODER.raw_decode(text, start)[0]
    except ValueError:
        if not _OTHER_CONTROL.search(text):
            raise
    return _DECODER.raw_decode(_controls_to_spaces(text), start)[0]


def c_string(value: str) -> str:
    """OpenSIPS handles strings as C strings: an embedded NUL ends them."""
    nul = value.find("\0")
    return value if nul < 0 else value[:nul]


def number_to_int(number: int | float) -> int:
    """A JSON number as OpenSIPS reads it (ids, int params): truncated,
    saturated to 32 bits."""
    if isinstance(number, float):
        if number != number:  # NaN never comes from JSON, but stay total
            return 0
        if number in (float("inf"), float("-inf")):
            return INT_MAX if number > 0 else INT_MIN
    return max(INT_MIN, min(INT_MAX, int(number)))


@dataclass
class Request:
    """A valid envelope. `params` is None (no params, incl. `{}` / `[]`), a
    list or a dict; `id` is a str, an int, None or `NOTIFICATION`."""

    method: str
    params: list | dict | None
    id: Any

    @property
    def is_notification(self) -> bool:
        return self.id is NOTIFICATION


class RequestError(Exception):
    """The body is not a valid request; `reply` is what to answer
    (sent even for a notification)."""

    def __init__(self, reply: bytes):
        super().__init__(reply)
        self.reply = reply


_ENVELOPE = ("jsonrpc", "method", "params", "id")


def _envelope_members(obj: dict) -> dict:
    """The four envelope members, looked up case-insensitively, first wins."""
    found = {}
    for key, value in obj.items():
        name = key if key in _ENVELOPE else (key.lower() if key.isascii() else key)
        if name in _ENVELOPE and name not in found:
            found[name] = value
    return found


def parse_request(body: bytes) -> Request:
    """Parse and validate one request body (docs/protocols/mi.md §1 steps 1-3)."""
    text = body.decode("utf-8", "surrogateescape")
    try:
        value = decode_first_value(text)
    except (ValueError, RecursionError):
        raise RequestError(PARSE_ERROR_REPLY) from None
    if not isinstance(value, dict):
        raise RequestError(INVALID_REQUEST_NULL_ID)
    members = _envelope_members(value)

    valid = True
    request_id: Any
    if "id" in members:
        raw_id = members["id"]
        if isinstance(raw_id, str):
            request_id = c_string(raw_id)
        elif isinstance(raw_id, bool) or not isinstance(raw_id, (int, float, type(None))):
            request_id, valid = None, False
        elif raw_id is None:
            request_id = None
        else:
            request_id = number_to_int(raw_id)
    else:
        request_id = NOTIFICATION

    if members.get("jsonrpc") != "2.0":
        valid = False
    method = members.get("method")
    if not isinstance(method, str):
        valid = False
    params = members.get("params")
    if "params" in members and not isinstance(params, (list, dict)):
        valid = False
    if not valid:
        if request_id is NOTIFICATION or request_id is None or not isinstance(request_id, (str, int)):
            raise RequestError(INVALID_REQUEST_NULL_ID)
        raise RequestError(encode_error(-32600, "Invalid Request", None, request_id))
    if not params:
        params = None
    assert isinstance(method, str)   # else not valid, refused above
    return Request(c_string(method), params, request_id)


def encode_id(request_id: object) -> bytes:
    if request_id is None:
        return b"null"
    if isinstance(request_id, int):
        return str(request_id).encode()
    return jsonenc.dumps(request_id)


def encode_success(result: object, request_id: object) -> bytes:
    return b'{"jsonrpc":"2.0","result":' + jsonenc.dumps(result) + b',"id":' + encode_id(request_id) + b"}"


def encode_error(code: int, message: str, data: object, request_id: object) -> bytes:
    error = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return b'{"jsonrpc":"2.0","error":' + jsonenc.dumps(error) + b',"id":' + encode_id(request_id) + b"}"

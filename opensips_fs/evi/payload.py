"""EVI payloads: the bytes a raised event becomes (sans-IO, no sockets).

Supports (docs/protocols/evi.md §4.1, §2.5):
* the JSON-RPC 2.0 notification OpenSIPS sends to datagram, stream and http
  subscribers — compact, members `jsonrpc`, `method`, `params` in that
  order, `params` omitted when the event has none, no `id`, cJSON escapes;
* the E_FREESWITCH fast path (`freeswitch_tail`): params `name`, `sender`,
  `body`, the ESL body text verbatim (invalid UTF-8 round-trips through
  ``surrogateescape``);
* MI `raise_event` params (`parse_mi_params`): a JSON array of strings or
  numbers (unnamed params, printed with empty keys as OpenSIPS does) or a
  string holding a JSON object (named params, duplicates and order kept).

Goals: the notification is serialized once per raise and shared by every
subscriber; only a tcp `/method` override costs one concatenation more.
Cost is linear in the size of the params (orjson does the escaping).

Plan: a notification is `method_head(event) + tail`, `tail` being the
params part; E_FREESWITCH caches the encoded `name`/`sender` prefix of its
tail so that only the body is encoded per event.
"""

from __future__ import annotations

import json

from orjson import dumps as _orjson_dumps

from ..jsonenc import dumps
from ..mi.commands import MISSING, MiError
from ..mi.jsonrpc import number_to_int

__all__ = ["Notification", "notification", "freeswitch_tail", "parse_mi_params"]

Params = list[tuple[str, "str | int"]]  # an event's (name, value) pairs, in order

HEAD = b'{"jsonrpc":"2.0","method":'
_PARAMS = b',"params":{'


def method_head(method: str) -> bytes:
    """`{"jsonrpc":"2.0","method":"<method>"` — everything before params."""
    return HEAD + dumps(method)


FREESWITCH_HEAD = method_head("E_FREESWITCH")


class Notification:
    """One raised event: its name, params, and the shared JSON bytes.

    `tail` is everything after the method member, so a subscriber with a
    method override sends `method_head(m) + tail`.
    """

    __slots__ = ("event", "params", "tail", "payload")

    def __init__(self, event: str, params: Params | None, tail: bytes, payload: bytes):
        self.event = event
        self.params = params
        self.tail = tail
        self.payload = payload

    def for_method(self, head: bytes) -> bytes:
        return head + self.tail


def params_tail(params: Params | None) -> bytes:
    """The bytes after `"method":"…"`: `,"params":{…}}` or `}`."""
    if not params:
        return b"}"
    members = [dumps(name) + b":" + dumps(value) for name, value in params]
    return _PARAMS + b",".join(members) + b"}}"


def notification(event: str, params: Params | None) -> Notification:
    """Build the notification for `event` with `params` [(name, str|int)]."""
    tail = params_tail(params)
    return Notification(event, params, tail, method_head(event) + tail)


_FS_PREFIXES: dict[tuple[str, str], bytes] = {}


def freeswitch_tail(name: str, sender: str, body: str) -> bytes:
    """The E_FREESWITCH params part: `,"params":{"name":…,"sender":…,"body":…}}`.

    Event names and senders repeat, so their encoded prefix is cached (a
    bounded cache); only the body is encoded per event.
    """
    prefix = _FS_PREFIXES.get((name, sender))
    if prefix is None:
        prefix = (b',"params":{"name":' + dumps(name) + b',"sender":' + dumps(sender)
                  + b',"body":')
        if len(_FS_PREFIXES) >= 4096:
            _FS_PREFIXES.clear()
        _FS_PREFIXES[(name, sender)] = prefix
    try:
        encoded = _orjson_dumps(body)
    except TypeError:       # undecodable bytes (surrogates): the exact slow path
        encoded = dumps(body)
    return prefix + encoded + b"}}"


class _Pairs(list[tuple[str, object]]):
    """A JSON object's members in order, duplicates kept (as cJSON does)."""


def _value_param(value: object) -> str | int:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number_to_int(value)
    # [EMU] OpenSIPS emits freed memory here; we emit the JSON text.
    return dumps(_plain(value)).decode("utf-8", "surrogateescape")


def _plain(value: object) -> object:
    """Undo the pair lists of `_object_pairs` (nested objects) for encoding."""
    if isinstance(value, _Pairs):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def parse_mi_params(raw: object) -> Params | None:
    """MI `raise_event`'s `params` value -> params list (docs/protocols/evi.md §2.5 step 3).

    Raises MiError 400 "Bad Params" / "No Params" like OpenSIPS.
    """
    if raw is MISSING:
        return None
    if isinstance(raw, list):
        items: Params = []
        for item in raw:
            if isinstance(item, str):
                items.append(("", item))
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                items.append(("", str(number_to_int(item))))
            else:
                raise MiError(400, "Bad Params")
        return items or None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        raise MiError(400, "Bad Params")  # its decimal text is not an object
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw, object_pairs_hook=_Pairs)
        except ValueError:
            raise MiError(400, "Bad Params") from None
        if not isinstance(parsed, _Pairs):
            raise MiError(400, "Bad Params")
        return [(name, _value_param(value)) for name, value in parsed] or None
    raise MiError(400, "No Params")

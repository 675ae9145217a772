"""Compact JSON encoding with OpenSIPS's (cJSON's) bytes.

Everything the service emits as JSON (MI replies, EVI payloads) goes through
`dumps`: no whitespace, dict insertion order kept, non-ASCII copied raw as
UTF-8, control characters escaped as cJSON does (`\\n`, `\\t`, `\\u00XX` with
lower-case hex), `/` and DEL left alone. orjson produces exactly these bytes;
strings carrying undecodable bytes (decoded with ``surrogateescape``) fall back
to the standard library so they round-trip byte for byte.
"""

import json

import orjson

__all__ = ["dumps", "dumps_str", "encoded"]


def dumps(obj: object) -> bytes:
    """Encode `obj` as compact JSON bytes."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        # str with lone surrogates (bytes that were not UTF-8), or ints
        # beyond 64 bits: the slow path keeps them exact.
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", "surrogateescape")


def encoded(obj: object) -> orjson.Fragment:
    """`obj` encoded once, to be placed as it is inside what `dumps` encodes
    later (a result many clients ask for and that seldom changes)."""
    return orjson.Fragment(dumps(obj))


def dumps_str(value: str) -> bytes:
    """Encode one string as a JSON string literal (quotes included)."""
    return dumps(value)

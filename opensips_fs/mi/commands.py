"""MI commands: how a command is declared and how its params are read.

A command has a canonical name `module:name`, an optional 3.x flat alias and
one or more recipes (lists of param names). Its handler receives `Params`
and reads each param with the OpenSIPS typing rules (MI.md §5); the first
failing read raises `MiError`, which the registry turns into the JSON-RPC
error object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["MISSING", "MiCommand", "MiError", "Params", "bad_type", "invalid_params"]

INT_MIN, INT_MAX = -(2 ** 31), 2 ** 31 - 1
_INT_TEXT = re.compile(r"[+-]?[0-9]+\Z")
MISSING = object()


class MiError(Exception):
    """A JSON-RPC error reply: code, message and optional data."""

    def __init__(self, code: int, message: str, data: str | None = None):
        super().__init__(code, message, data)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict:
        error = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def invalid_params(data: str) -> MiError:
    return MiError(-32602, "Invalid params", data)


def bad_type(name: str) -> MiError:
    return invalid_params(f"Bad type for parameter '{name}'")


@dataclass
class MiCommand:
    """One MI command. `handler(params)` returns the JSON-able result."""

    module: str
    name: str
    alias: str | None
    recipes: list[list[str]]
    handler: Callable[["Params"], Any]
    help: str | None = None

    @property
    def canonical(self) -> str:
        return f"{self.module}:{self.name}"

    @property
    def flat(self) -> str:
        """The 3.x name `which` lists: the alias, else the local name."""
        return self.alias or self.name


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _clamp32(value: int) -> int:
    return max(INT_MIN, min(INT_MAX, value))


def _number_to_int(value) -> int:
    """A JSON number as OpenSIPS reads it: truncated, saturated to 32 bits."""
    if isinstance(value, float):
        if value != value:  # NaN never comes from JSON, but stay total
            return 0
        if value in (float("inf"), float("-inf")):
            return INT_MAX if value > 0 else INT_MIN
    return _clamp32(int(value))


class Params:
    """The params of one call, mapped onto the matched recipe's names."""

    def __init__(self, values: dict[str, Any] | None = None):
        self._values = values or {}

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def __len__(self) -> int:
        return len(self._values)

    def raw(self, name: str):
        """The JSON value as received, or `MISSING`."""
        return self._values.get(name, MISSING)

    def string(self, name: str) -> str:
        value = self._values.get(name, MISSING)
        if isinstance(value, str):
            return value
        if _is_number(value):
            return str(_number_to_int(value))
        raise bad_type(name)

    def int(self, name: str) -> int:
        value = self._values.get(name, MISSING)
        if _is_number(value):
            return _number_to_int(value)
        if isinstance(value, str) and _INT_TEXT.match(value):
            number = int(value)
            if INT_MIN <= number <= INT_MAX:
                return number
        raise bad_type(name)

    def strings(self, name: str) -> list[str]:
        value = self._values.get(name, MISSING)
        if not isinstance(value, list):
            raise bad_type(name)
        if not value:
            raise invalid_params(f"Empty array in parameter '{name}'")
        items = []
        for item in value:
            if isinstance(item, str):
                items.append(item)
            elif _is_number(item):
                items.append(str(_number_to_int(item)))
            else:
                raise invalid_params(f"Bad type for array item in parameter '{name}'")
        return items

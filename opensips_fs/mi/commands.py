"""MI command declarations and OpenSIPS param typing.

A command has a canonical name `module:name`, an optional 3.x flat alias and
one or more recipes (lists of param names). Its handler receives `Params`
and reads each param with OpenSIPS's typing rules (a number where a string
is wanted is printed, an integer given as text is read, both saturated to
32 bits): the first failing read raises `MiError`, which the registry
(registry.py) turns into the JSON-RPC error object.
`match_recipe` picks the recipe a call's params fit.

Nothing here touches JSON-RPC dispatch; rooms declare their commands with
these classes and hand them to `registry.MiRegistry.register`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from .jsonrpc import INT_MAX, INT_MIN, c_string, member_count, number_to_int

__all__ = [
    "MISSING", "MiCommand", "MiError", "Params", "bad_type", "invalid_params", "match_recipe",
    "AMBIGUOUS_CALL", "HANDLER_RETURNED_NULL", "NAMES_DO_NOT_MATCH", "TOO_FEW_OR_MANY",
]

_INT_TEXT = re.compile(r"[+-]?[0-9]+\Z")
MISSING = object()


class MiError(Exception):
    """A JSON-RPC error reply: code, message and optional data. `reason`
    is never sent: it says in the log why the call failed when the reply
    (OpenSIPS's bytes, often a bare `500 Internal Error`) does not."""

    def __init__(self, code: int, message: str, data: str | None = None,
                 reason: str | None = None):
        super().__init__(code, message, data)
        self.code = code
        self.message = message
        self.data = data
        self.reason = reason

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


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Params:
    """The params of one call, mapped onto the matched recipe's names."""

    def __init__(self, values: dict[str, Any] | None = None):
        self._values = values or {}

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def __len__(self) -> int:
        return len(self._values)

    def raw(self, name: str) -> Any:
        """The JSON value as received, or `MISSING`."""
        return self._values.get(name, MISSING)

    def string(self, name: str) -> str:
        value = self._values.get(name, MISSING)
        if isinstance(value, str):
            return c_string(value)
        if _is_number(value):
            return str(number_to_int(value))
        raise bad_type(name)

    def int(self, name: str) -> int:
        value = self._values.get(name, MISSING)
        if _is_number(value):
            return number_to_int(value)
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
                items.append(c_string(item))
            elif _is_number(item):
                items.append(str(number_to_int(item)))
            else:
                raise invalid_params(f"Bad type for array item in parameter '{name}'")
        return items


# ---------------------------------------------------------------------------
# Recipe matching: which of a command's recipes a call's params fit.


TOO_FEW_OR_MANY = "Too few or too many parameters"
NAMES_DO_NOT_MATCH = "Named parameters do not match"
AMBIGUOUS_CALL = "Ambiguous call, use named parameters instead"
HANDLER_RETURNED_NULL = "Command handler returned null"


def match_recipe(command: MiCommand, params: list | dict | None) -> Params:
    """Pick the recipe for `params` (None, list or dict) — docs/protocols/mi.md §4."""
    if params is None:
        if [] in command.recipes:
            return Params({})
        raise invalid_params(TOO_FEW_OR_MANY)
    if isinstance(params, list):
        count = len(params)
        fits = [r for r in command.recipes if r and len(r) == count]
        if not fits:
            raise invalid_params(TOO_FEW_OR_MANY)
        if len(fits) > 1:
            raise invalid_params(AMBIGUOUS_CALL)
        return Params(dict(zip(fits[0], params)))
    count = member_count(params)
    right_size = False
    for recipe in command.recipes:
        if recipe and len(recipe) == count:
            right_size = True
            if all(name in params for name in recipe):
                return Params({name: params[name] for name in recipe})
    raise invalid_params(NAMES_DO_NOT_MATCH if right_size else TOO_FEW_OR_MANY)

"""MI commands: declaration, OpenSIPS param typing, and the command registry.

A command has a canonical name `module:name`, an optional 3.x flat alias and
one or more recipes (lists of param names). Its handler receives `Params`
and reads each param with the OpenSIPS typing rules (MI.md §5); the first
failing read raises `MiError`, which the registry turns into the JSON-RPC
error object.

`MiRegistry.handle(body)` is the whole request pipeline of MI.md §1, shared
by every transport. What jsonrpcserver does and what is ours:

* **jsonrpcserver** dispatches (`dispatcher.dispatch_request`): it looks
  the method up in the registry's method mapping, checks the call against
  the method's signature, calls it (the parsed envelope is its *context*)
  and validates its `Success` / `Error` result.
* **ours, parsing and validation** (jsonrpc.py): jsonrpcserver's
  `json.loads` + JSON-schema check cannot reproduce OpenSIPS — first JSON
  value only, case-insensitive envelope members, first duplicate wins, raw
  control characters, batches refused, id truncation/saturation, the exact
  `-32600` id echo rule and messages ("Invalid Request", not jsonrpcserver's
  "Invalid request" with a `data`). So the body is parsed and validated
  first and jsonrpcserver receives the already-validated envelope.
* **ours, name resolution and recipes**: 4.x `module:cmd` names, 3.x
  aliases, ambiguity, recipe matching by count and names (MI.md §2, §4) —
  jsonrpcserver's Python-signature binding has no notion of them, and its
  -32601 carries a `data` OpenSIPS does not send. The method mapping
  therefore answers every name with a callable: the command runner, or one
  returning the resolution error.
* **ours, printing**: the reply members in OpenSIPS' order, nothing for a
  notification, `jsonenc` (cJSON bytes) instead of `json.dumps`, ids
  echoed as OpenSIPS does.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable

from jsonrpcserver import Error, Success
from jsonrpcserver.dispatcher import dispatch_request
from jsonrpcserver.request import Request as JsonRpcRequest
from jsonrpcserver.result import ErrorResult
from jsonrpcserver.sentinels import NODATA, NOID
from oslash.either import Left

from ..stats import Stats
from .jsonrpc import (INT_MAX, INT_MIN, PARSE_ERROR_REPLY, Request, RequestError, c_string,
                      encode_error, encode_success, member_count, number_to_int, parse_request)

__all__ = [
    "MISSING", "MiCommand", "MiError", "MiRegistry", "Params", "bad_type",
    "invalid_params", "match_recipe",
]

log = logging.getLogger(__name__)

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
# The registry: name resolution, recipe matching, JSON-RPC dispatch.


TOO_FEW_OR_MANY = "Too few or too many parameters"
NAMES_DO_NOT_MATCH = "Named parameters do not match"
AMBIGUOUS_CALL = "Ambiguous call, use named parameters instead"
HANDLER_RETURNED_NULL = "Command handler returned null"


def match_recipe(command: MiCommand, params) -> Params:
    """Pick the recipe for `params` (None, list or dict) — MI.md §4."""
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


class _Resolution:
    """What a method name resolves to: a command, or an error."""

    __slots__ = ("command", "error")

    def __init__(self, command: MiCommand | None = None, error: MiError | None = None):
        self.command = command
        self.error = error


_NOT_FOUND = _Resolution(error=MiError(-32601, "Method not found"))
# jsonrpcserver binds the call to the method's signature first: declare the
# catch-all one up front so that `inspect.signature` does not rebuild it.
_CATCH_ALL = inspect.Signature([
    inspect.Parameter("context", inspect.Parameter.POSITIONAL_ONLY),
    inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
    inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
])


class _Methods(Mapping):
    """The `methods` mapping handed to jsonrpcserver: every name maps to a
    callable — the command's runner, or one answering the resolution error
    (OpenSIPS' -32601 carries no `data`, jsonrpcserver's own one would)."""

    def __init__(self, registry: "MiRegistry"):
        self._registry = registry

    def __getitem__(self, name: str):
        return self._registry._runner(name)

    def __iter__(self):
        return iter(self._registry.which_names())

    def __len__(self) -> int:
        return len(self._registry.which_names())


class MiRegistry:
    """All MI commands, and the request pipeline of MI.md §1.

    `handle(body)` parses the body (jsonrpc.py: OpenSIPS' JSON quirks), then
    hands the validated envelope to jsonrpcserver's dispatcher, which looks
    the method up in our `_Methods` mapping, calls it and validates its
    `Success`/`Error` result; the reply (none for a notification) is then
    printed with OpenSIPS' bytes.
    """

    def __init__(self, stats: Stats | None = None):
        self.stats = stats if stats is not None else Stats()
        self._commands: list[MiCommand] = []
        self._by_canonical: dict[str, MiCommand] = {}
        self._by_local: dict[str, list[MiCommand]] = {}
        self._by_alias: dict[str, list[MiCommand]] = {}
        self._runners: dict[str, Callable] = {}
        self._which: list[str] = []
        self._methods = _Methods(self)
        self._requests = self.stats.counter("mi", "requests")
        self._errors = self.stats.counter("mi", "error_replies")
        self._parse_errors = self.stats.counter("mi", "parse_errors")
        self._invalid = self.stats.counter("mi", "invalid_requests")
        self._notifications = self.stats.counter("mi", "notifications")
        self._commands_run = self.stats.counter("mi", "commands_run")
        self._handler_failures = self.stats.counter("mi", "handler_failures")

    # -- registration -------------------------------------------------------

    def register(self, commands: Iterable[MiCommand]) -> None:
        for command in commands:
            if command.canonical in self._by_canonical:
                raise ValueError(f"MI command {command.canonical} registered twice")
            self._commands.append(command)
            self._by_canonical[command.canonical] = command
            self._by_local.setdefault(command.name, []).append(command)
            if command.alias:
                self._by_alias.setdefault(command.alias, []).append(command)
        self._runners.clear()
        flat = dict.fromkeys(c.flat for c in self._commands)
        self._which = list(flat) + [c.canonical for c in self._commands if c.canonical not in flat]

    def commands(self) -> list[MiCommand]:
        return list(self._commands)

    def which_names(self) -> list[str]:
        """Flat names, then canonical names (MI.md §2.3)."""
        return list(self._which)

    # -- name resolution ----------------------------------------------------

    def _resolve(self, name: str) -> _Resolution:
        if ":" in name:
            if name[0] == ":" or name[-1] == ":":
                return _NOT_FOUND
            command = self._by_canonical.get(name)
            return _Resolution(command) if command else _NOT_FOUND
        locals_ = self._by_local.get(name, [])
        if len(locals_) == 1:
            return _Resolution(locals_[0])
        aliased = self._by_alias.get(name, [])
        if not locals_ and len(aliased) == 1:
            return _Resolution(aliased[0])
        if not locals_ and not aliased:
            return _NOT_FOUND
        names = [c.canonical for c in locals_]
        names += [c.canonical for c in aliased if c.canonical not in names]
        return _Resolution(error=MiError(-32001, "Method ambiguous", "supported names: " + ", ".join(names)))

    def resolve(self, name: str) -> MiCommand | None:
        """The command `name` designates (flat, local or canonical), or None
        when it is unknown or ambiguous."""
        return self._resolve(name).command

    # -- dispatch ------------------------------------------------------------

    def _runner(self, name: str) -> Callable:
        runner = self._runners.get(name)
        if runner is not None:
            return runner
        resolution = self._resolve(name)
        if resolution.command is None:
            error = resolution.error

            def runner(_request, *_args, **_kwargs):
                return Error(error.code, error.message, error.data if error.data is not None else NODATA)
        else:
            command = resolution.command

            def runner(request: Request, *_args, **_kwargs):
                return self._run(command, request.params)

            # Only found names are cached: unknown ones must not grow the cache.
            self._runners[name] = runner
        runner.__signature__ = _CATCH_ALL
        return runner

    def _run(self, command: MiCommand, params):
        try:
            result = command.handler(match_recipe(command, params))
        except MiError as error:
            return Error(error.code, error.message, error.data if error.data is not None else NODATA)
        except Exception:
            self._handler_failures.value += 1
            log.exception("MI command %s failed", command.canonical)
            result = None
        finally:
            self._commands_run.value += 1
        if result is None:
            return Error(-32000, "Server error", HANDLER_RETURNED_NULL)
        return Success(result)

    def handle(self, body: bytes) -> bytes | None:
        """Answer one request body: the reply bytes, or None for a
        notification (nothing to send). Never raises."""
        try:
            return self._handle(body)
        except Exception:  # a bug of ours must not take a transport down
            log.exception("MI request failed")
            self._errors.value += 1
            return encode_error(-32000, "Server error", None, None)

    def _handle(self, body: bytes) -> bytes | None:
        self._requests.value += 1
        try:
            request = parse_request(body)
        except RequestError as error:
            if error.reply is PARSE_ERROR_REPLY:
                self._parse_errors.value += 1
            else:
                self._invalid.value += 1
            self._errors.value += 1
            return error.reply
        try:
            # jsonrpcserver's dispatcher: method lookup, signature check, call
            # and result validation; the envelope is already parsed and
            # validated (above), and the reply is printed by us (below).
            _, result = dispatch_request(
                self._methods, request,
                JsonRpcRequest(request.method, [], NOID if request.is_notification else request.id))
            outcome = result._error if isinstance(result, Left) else result._value
        except Exception:  # jsonrpcserver catches its own; stay total anyway
            log.exception("MI dispatch failed for %r", request.method)
            outcome = ErrorResult(-32000, "Server error")
        if request.is_notification:
            self._notifications.value += 1
            return None
        if isinstance(outcome, ErrorResult):
            self._errors.value += 1
            data = None if outcome.data is NODATA else outcome.data
            return encode_error(outcome.code, outcome.message, data, request.id)
        return encode_success(outcome.result, request.id)


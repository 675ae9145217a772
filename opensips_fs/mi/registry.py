"""The MI command registry: name resolution and the request pipeline.

`MiRegistry.handle(body)` answers one JSON-RPC request body, for every
transport. What jsonrpcserver does and what is ours:

* **jsonrpcserver** runs the method (`run_dispatcher`, the one function that
  touches its internals): its dispatcher's `call` step calls the method with
  the parsed envelope as its *context*, turns a raised error into an error
  result and validates the `Success` / `Error` the method returns. Its
  lookup is our method mapping (`_Methods`), and its argument check binds
  nothing here (every runner takes any arguments), so both are done once
  per request body and kept (`_prepare`) instead of once per request.
* **ours, parsing and validation** (jsonrpc.py): jsonrpcserver's
  `json.loads` + JSON-schema check cannot reproduce OpenSIPS — first JSON
  value only, case-insensitive envelope members, first duplicate wins, raw
  control characters, batches refused, id truncation/saturation, the exact
  `-32600` id echo rule and messages ("Invalid Request", not jsonrpcserver's
  "Invalid request" with a `data`). So the body is parsed and validated
  first and jsonrpcserver receives the already-validated envelope.
* **ours, name resolution and recipes**: 4.x `module:cmd` names, 3.x
  aliases, ambiguity, recipe matching by count and names — jsonrpcserver's
  Python-signature binding has no notion of them, and its -32601 carries a
  `data` OpenSIPS does not send. The method mapping therefore answers every
  name with a callable: the command runner, or one returning the resolution
  error.
* **ours, printing**: the reply members in OpenSIPS' order, nothing for a
  notification, `jsonenc` (cJSON bytes) instead of `json.dumps`, ids
  echoed as OpenSIPS does.

Every error reply is logged once, at NOTICE, with the command, the
transport it came over and the real reason (`MiError.reason`, the `data`, or
what the parser refused); the log's repeat limit keeps a flood short.
Every request is also counted in `calls` (callstats.py) by command,
transport and outcome, with its latency, for the `/metrics` page.

Fast path: clients that poll send the same body again and again; what a
body needs besides running the command (the validated envelope, the runner,
jsonrpcserver's request, the reply's closing bytes) is a pure function of
the body and the registered commands, so it is kept for small bodies whose
params are scalars (`PREPARED_ENTRIES` of them; registering clears them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from time import perf_counter
from typing import Callable

from gevent.local import local

from jsonrpcserver import Error, Result, Success
from jsonrpcserver.dispatcher import call
from jsonrpcserver.request import Request as JsonRpcRequest
from jsonrpcserver.sentinels import NODATA, NOID

from .. import jsonenc
from ..logs import NOTICE
from ..stats import Stats
from .callstats import INVALID, UNKNOWN, MiCallStats
from .commands import HANDLER_RETURNED_NULL, MiCommand, MiError, match_recipe
from .jsonrpc import PARSE_ERROR_REPLY, Request, RequestError, encode_error, encode_id, parse_request

__all__ = ["MiRegistry", "run_dispatcher"]

log = logging.getLogger(__name__)

PREPARED_ENTRIES = 512
PREPARED_MAX_BODY = 1024


class _Resolution:
    """What a method name resolves to: a command, or an error."""

    __slots__ = ("command", "error")

    def __init__(self, command: MiCommand | None = None, error: MiError | None = None):
        self.command = command
        self.error = error


_NOT_FOUND = _Resolution(error=MiError(-32601, "Method not found"))


class _Methods(Mapping[str, Callable[..., Result]]):
    """The `methods` mapping handed to jsonrpcserver: every name maps to a
    callable — the command's runner, or one answering the resolution error
    (OpenSIPS' -32601 carries no `data`, jsonrpcserver's own one would)."""

    def __init__(self, registry: "MiRegistry"):
        self._registry = registry

    def __getitem__(self, name: str) -> Callable[..., Result]:
        return self._registry.runner(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry.which_names())

    def __len__(self) -> int:
        return len(self._registry.which_names())


class MiRegistry:
    """All MI commands, and the request pipeline (module docstring)."""

    def __init__(self, stats: Stats | None = None):
        self.stats = stats if stats is not None else Stats()
        self._commands: list[MiCommand] = []
        self._by_canonical: dict[str, MiCommand] = {}
        self._by_local: dict[str, list[MiCommand]] = {}
        self._by_alias: dict[str, list[MiCommand]] = {}
        self._runners: dict[str, Callable] = {}
        self._which: list[str] = []
        self._methods = _Methods(self)
        self._prepared: dict[bytes, tuple] = {}
        self._labels: dict[str, str] = {}       # canonical name -> metric label
        self._failed = local()       # why the current greenlet's call failed (logged once)
        self._requests = self.stats.counter("mi", "requests", "MI requests received over every transport")
        self._errors = self.stats.counter("mi", "error_replies", "MI requests answered with a JSON-RPC error")
        self._parse_errors = self.stats.counter("mi", "parse_errors", "MI request bodies that are not JSON")
        self._invalid = self.stats.counter("mi", "invalid_requests",
                                           "MI bodies that are JSON but not a JSON-RPC 2.0 request")
        self._notifications = self.stats.counter("mi", "notifications",
                                                 "MI notifications (requests without an id: no reply)")
        self._commands_run = self.stats.counter("mi", "commands_run", "MI command handlers run")
        self.calls = MiCallStats()       # by command, transport and outcome (metrics)
        self._handler_failures = self.stats.counter("mi", "handler_failures",
                                                    "MI command handlers that raised (a bug: logged with a traceback)")

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
        self._prepared.clear()
        self._labels = {c.canonical: c.flat if self._resolve(c.flat).command is c else c.canonical
                        for c in self._commands}
        flat = dict.fromkeys(c.flat for c in self._commands)
        self._which = list(flat) + [c.canonical for c in self._commands if c.canonical not in flat]

    def commands(self) -> list[MiCommand]:
        return list(self._commands)

    def which_names(self) -> list[str]:
        """Flat names, then canonical names (docs/protocols/mi.md §2.3)."""
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

    def runner(self, name: str) -> Callable[..., Result]:
        """What jsonrpcserver runs for the method `name`: the command's
        runner, or one answering the resolution error."""
        runner = self._runners.get(name)
        if runner is not None:
            return runner
        resolution = self._resolve(name)
        if resolution.command is None:
            error = resolution.error
            assert error is not None   # a resolution has a command or an error

            def runner(_request: Request, *_args: object, **_kwargs: object) -> Result:
                return Error(error.code, error.message, error.data if error.data is not None else NODATA)
        else:
            command = resolution.command

            def runner(request: Request, *_args: object, **_kwargs: object) -> Result:
                return self._run(command, request.params)

            # Only found names are cached: unknown ones must not grow the cache.
            self._runners[name] = runner
        return runner

    def _run(self, command: MiCommand, params: list | dict | None) -> Result:
        try:
            result = command.handler(match_recipe(command, params))
        except MiError as error:
            if error.reason:
                self._failed.reason = error.reason
            return Error(error.code, error.message, error.data if error.data is not None else NODATA)
        except Exception as exc:
            self._handler_failures.value += 1
            log.exception("MI command %s failed", command.canonical)
            self._failed.reason = f"the handler raised {type(exc).__name__} (traceback above)"
            result = None
        finally:
            self._commands_run.value += 1
        if result is None:
            return Error(-32000, "Server error", HANDLER_RETURNED_NULL)
        return Success(result)

    def handle(self, body: bytes, transport: str = "mi") -> bytes | None:
        """Answer one request body that came over `transport` (``http``,
        ``fifo``, ``datagram``: for the log and the metrics): the reply
        bytes, or None for a notification (nothing to send). Never raises."""
        started = perf_counter()
        try:
            reply, command, ok = self._handle(body, transport)
        except Exception:  # a bug of ours must not take a transport down
            log.exception("MI request failed")
            self._errors.value += 1
            reply, command, ok = encode_error(-32000, "Server error", None, None), UNKNOWN, False
        self.calls.record(command, transport, ok, perf_counter() - started)
        return reply

    def metric_label(self, method: str) -> str:
        """The `command` label of a request for `method`: the name `which`
        lists for the command (its canonical name when that is ambiguous),
        or ``unknown`` — never the text a client sent."""
        command = self.resolve(method)
        return UNKNOWN if command is None else self._labels[command.canonical]

    def _handle(self, body: bytes, transport: str) -> tuple[bytes | None, str, bool]:
        """(reply, command label, answered without error)."""
        self._requests.value += 1
        prepared = self._prepared.get(body)
        if prepared is None:
            try:
                prepared = self._prepare(body)
            except RequestError as error:
                if error.reply is PARSE_ERROR_REPLY:
                    self._parse_errors.value += 1
                    why = "the body is not JSON"
                else:
                    self._invalid.value += 1
                    why = "not a JSON-RPC 2.0 request"
                self._errors.value += 1
                log.log(NOTICE, "MI request over %s refused: %s (%d bytes)", transport, why, len(body))
                return error.reply, INVALID, False
        request, runner, id_suffix, label = prepared
        result, failure = run_dispatcher(runner, request)
        if failure is not None:
            self._log_failure(request.method, transport, failure)
        if id_suffix is None:
            self._notifications.value += 1
            return None, label, failure is None
        if failure is None:
            return b'{"jsonrpc":"2.0","result":' + jsonenc.dumps(result) + id_suffix, label, True
        self._errors.value += 1
        code, message, data = failure
        return encode_error(code, message, data, request.id), label, False

    def _log_failure(self, method: str, transport: str, failure: tuple) -> None:
        reason = getattr(self._failed, "reason", None)
        self._failed.reason = None
        code, message, data = failure
        why = "; ".join(str(x) for x in (data, reason) if x)
        log.log(NOTICE, "MI %s over %s answered %s %s%s", method, transport, code, message,
                f": {why}" if why else "")

    def _prepare(self, body: bytes) -> tuple:
        """(validated envelope, runner, the reply's closing bytes or None
        for a notification); kept for small bodies with scalar params."""
        request = parse_request(body)
        runner = self._methods[request.method]   # jsonrpcserver's method lookup
        id_suffix = None if request.is_notification else b',"id":' + encode_id(request.id) + b"}"
        prepared = (request, runner, id_suffix, self.metric_label(request.method))
        if len(body) <= PREPARED_MAX_BODY and _scalar_params(request.params):
            if len(self._prepared) >= PREPARED_ENTRIES:
                self._prepared.clear()
            self._prepared[body] = prepared
        return prepared


def _scalar_params(params: list | dict | None) -> bool:
    """No params, or only strings and numbers (nothing a handler could change)."""
    if params is None:
        return True
    values = params.values() if isinstance(params, dict) else params
    return all(type(v) in (str, int, float, bool) or v is None for v in values)


def run_dispatcher(method: Callable, envelope: Request) -> tuple:
    """Run `method` through jsonrpcserver's dispatcher: (result, None) or
    (None, (code, message, data or None)).

    Its `call` step calls the method with the envelope as its context,
    turns a raised `JsonRpcError` or exception into an error result and
    validates the `Success` / `Error` the method returned. The one place
    that knows jsonrpcserver's request and result types (an Either holding a
    `SuccessResult` or an `ErrorResult`)."""
    request_id = NOID if envelope.is_notification else envelope.id
    outcome = call(JsonRpcRequest(envelope.method, [], request_id), envelope, method)
    if hasattr(outcome, "_value"):
        return outcome._value.result, None
    error = outcome._error
    return None, (error.code, error.message, None if error.data is NODATA else error.data)

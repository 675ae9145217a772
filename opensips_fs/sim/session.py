"""What the simulated mod_event_socket does with each client command
(docs/protocols/esl.md §5, §9): the same prefix matching and order as FreeSWITCH's
``parse_command``, the exact reply texts (typos included), userauth limits.

``handle(client, cmd)`` runs one parsed ``Command`` for one ``SimClient`` and
queues its reply; everything that needs the box (api, events, calls) goes
through ``client.box``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from .notices import BYE
from .events import EVENT_NAMES, is_event_name

if TYPE_CHECKING:
    from .client import SimClient
    from .commands import Command

__all__ = ["handle", "reply_frame", "api_frame", "LOG_LEVELS", "log_level"]

LOG_LEVELS = {"console": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4,
              "notice": 5, "info": 6, "debug": 7}


def reply_frame(text: str, extra: list[tuple[str, str]] | None = None) -> bytes:
    lines = ["Content-Type: command/reply", "Reply-Text: " + text]
    if extra:
        lines += ["%s: %s" % kv for kv in extra]
    return ("\n".join(lines) + "\n\n").encode("utf-8", "surrogateescape")


def api_frame(output: str) -> bytes:
    raw = output.encode("utf-8", "surrogateescape")
    return b"Content-Type: api/response\nContent-Length: %d\n\n%s" % (len(raw), raw)


def _reply(client: SimClient, text: str, extra: list[tuple[str, str]] | None = None) -> None:
    client.send_frame(reply_frame(text, extra))


def _fail_auth(client: SimClient) -> None:
    client.send_frame(reply_frame("-ERR invalid"))
    client.close_with(BYE, "auth failed")


def handle(client: SimClient, cmd: Command) -> None:
    line = cmd.line
    low = line.lower()
    if low.startswith("exit") or low.startswith("..."):
        _reply(client, "+OK bye")
        client.close_with(BYE, "exit")
        return
    if not client.authed:
        _login(client, line, low)
        return
    for prefixes, run in _COMMANDS:
        if low.startswith(prefixes):
            run(client, cmd)
            return
    _reply(client, "-ERR command not found")


def _login(client: SimClient, line: str, low: str) -> None:
    """What an unauthenticated client may send: auth or userauth."""
    if low.startswith("auth "):
        password = client.box.password
        if password is not None and line[5:] == password:
            client.authed = True
            _reply(client, "+OK accepted")
        else:
            _fail_auth(client)
    elif low.startswith("userauth "):
        _userauth(client, line[9:])
    else:
        _reply(client, "-ERR command not found")


def _noevents(client: SimClient, cmd: Command) -> None:
    if client.events_on:
        client.events_on = False
        client.all_events = False
        client.event_list.clear()
        client.subclasses.clear()
        client.drop_queued_events()
        _reply(client, "+OK no longer listening for events")
    else:
        _reply(client, "-ERR not listening for events")


def _nolog(client: SimClient, cmd: Command) -> None:
    client.drop_queued_logs()
    if client.log_level is not None:
        client.log_level = None
        _reply(client, "+OK no longer logging")
    else:
        _reply(client, "-ERR not loging")


def _sendmsg(client: SimClient, cmd: Command) -> None:
    _reply(client, "-ERR invalid session id [%s]" % cmd.line[7:].strip())


def _userauth(client: SimClient, rest: str) -> None:
    box = client.box
    user, at, domain_pass = rest.partition("@")
    domain, _, password = domain_pass.partition(":")
    if not at and not box.settings.userauth_requires_domain:
        user, _, password = rest.partition(":")
        name = user
    elif not user or not at or not domain:
        _fail_auth(client)
        return
    else:
        name = user + "@" + domain
    entry = box.find_user(name)
    if entry is None or entry.password != password:
        _fail_auth(client)
        return
    client.authed = True
    client.user = entry
    extra = [
        ("Allowed-Events", " ".join(entry.events) if entry.events is not None else "all"),
        ("Allowed-API", ",".join(entry.api) if entry.api is not None else "all"),
    ]
    if entry.events is not None:
        extra.append(("Allowed-LOG", "true" if entry.log else "false"))
    _reply(client, "+OK accepted", extra)


def _allowed_api(client: SimClient, text: str) -> tuple[str, str] | None:
    """(command, argument) of an api/bgapi line, or None (after the
    ``permission denied`` reply) if the userauth user may not run it."""
    name, _, arg = text.partition(" ")
    user = client.user
    if user is None or user.api is None or name in user.api or "all" in user.api:
        return name, arg
    _reply(client, "-ERR permission denied")
    return None


def _api(client: SimClient, text: str) -> None:
    call = _allowed_api(client, text)
    if call is None:
        return
    client.hold_events()
    try:
        client.send_frame(api_frame(client.box.run_api(*call)))
    finally:
        client.release_events()


def _bgapi(client: SimClient, text: str, job_uuid: str | None) -> None:
    call = _allowed_api(client, text)
    if call is None:
        return
    job = job_uuid or client.box.new_uuid()
    _reply(client, "+OK Job-UUID: " + job, [("Job-UUID", job)])
    client.box.spawn_bgapi(*call, job)


def _log(client: SimClient, rest: str) -> None:
    user = client.user
    if user is not None and not user.log:
        _reply(client, "-ERR permission denied")
        return
    level_s = rest[1:]  # FreeSWITCH skips one character after "log"
    level = log_level(level_s) if level_s else 7
    if level is None:
        _reply(client, "-ERR invalid log level")
        return
    client.log_level = level
    _reply(client, "+OK log level %s [%d]" % (level_s, level))


def log_level(text: str) -> int | None:
    """switch_log_str2level: a number (clamped to 0..63) or a level name."""
    if re.fullmatch(r"[-+]?[0-9.]+", text):
        try:
            value = int(float(text))
        except ValueError:
            return None
        return min(max(value, 0), 63)
    return LOG_LEVELS.get(text.lower())


def _event_allowed(client: SimClient, name: str) -> bool:
    user = client.user
    if user is None or user.events is None:
        return True
    allowed = {e.upper() for e in user.allowed_event_names()}
    return "ALL" in allowed or name in allowed


def _subclass_allowed(client: SimClient, subclass: str) -> bool:
    user = client.user
    if user is None or user.events is None:
        return True
    subs = user.allowed_subclasses()
    return not subs or subclass in subs


def _keywords(line: str, skip: int) -> list[str]:
    """The words after the first space that follows the ``skip``-character
    command word, split on single spaces as mod_event_socket does."""
    rest = line[skip:]
    space = rest.find(" ")
    return rest[space + 1:].split(" ") if space >= 0 else []


def _event(client: SimClient, line: str) -> None:
    key_count = 0
    custom = False
    for count, tok in enumerate(_keywords(line, 5)):
        if count == 0 and tok.lower() in ("xml", "plain", "json"):
            client.format = tok.lower()
            continue
        if custom:
            if not _subclass_allowed(client, tok):
                _reply(client, "-ERR permission denied")
                return
            client.subclasses[tok] = None
            continue
        name = is_event_name(tok)
        if name is None:
            continue
        if not _event_allowed(client, name):
            _reply(client, "-ERR permission denied")
            return
        key_count += 1
        if name == "ALL":
            client.all_events = True
        else:
            client.event_list[name] = None
        if name == "CUSTOM":
            custom = True
    if not key_count:
        _reply(client, "-ERR no keywords supplied")
        return
    client.events_on = True
    _reply(client, "+OK event listener enabled " + client.format)


def _nixevent(client: SimClient, line: str) -> None:
    key_count = 0
    custom = False
    for tok in _keywords(line, 8):
        if custom:
            client.subclasses.pop(tok, None)
            continue
        name = is_event_name(tok)
        if name is None:
            continue
        key_count += 1
        if name == "CUSTOM":
            custom = True
        elif name == "ALL":
            client.all_events = False
            client.event_list.clear()
        else:
            if client.all_events:
                client.all_events = False
                client.event_list = dict.fromkeys(n for n in EVENT_NAMES if n != "ALL")
            client.event_list.pop(name, None)
    if not key_count:
        _reply(client, "-ERR no keywords supplied")
        return
    client.events_on = True  # as FreeSWITCH does: a later noevents answers +OK
    _reply(client, "+OK events nixed")


def _filter(client: SimClient, rest: str) -> None:
    header = rest.lstrip(" ")
    name, sep, value = header.partition(" ")
    if name.lower() == "delete" and sep:
        name, sep2, value = value.partition(" ")
        if name.lower() == "all":
            client.filters.clear()
            _reply(client, "+OK filter deleted. [all][]")
            return
        if sep2:
            client.filters = [f for f in client.filters if not (f[0].lower() == name.lower() and f[1] == value)]
        else:
            client.filters = [f for f in client.filters if f[0].lower() != name.lower()]
        _reply(client, "+OK filter deleted. [%s][%s]" % (name, value))
    elif sep:
        if name.lower() == "add":
            name, _, value = value.partition(" ")
        client.filters.append((name, value))
        _reply(client, "+OK filter added. [%s]=[%s]" % (name, value))
    else:
        _reply(client, "-ERR invalid syntax")


def _sendevent(client: SimClient, cmd: Command) -> None:
    box = client.box
    uuid = box.new_uuid()
    rest = cmd.line[9:]
    ename = rest[1:] if rest.startswith(" ") else ""
    name = is_event_name(ename) if ename else None
    if name is None or name == "ALL":
        name = "CUSTOM"
    headers = [("Command", cmd.line)]
    headers += [(k, v) for k, v in cmd.headers if v != ""]
    subclass = None
    if name == "CUSTOM":
        for k, v in headers:
            if k.lower() == "event-subclass":
                subclass = v
                break
        if subclass is not None:
            headers = [("Event-Subclass", subclass)] + [h for h in headers if h[0].lower() != "event-subclass"]
    headers.append(("Event-UUID", uuid))
    body = cmd.body.decode("utf-8", "surrogateescape") if cmd.body is not None else None
    _reply(client, "+OK " + uuid)
    box.fire_sendevent(name, subclass, headers, body)


def _myevents(client: SimClient, line: str) -> None:
    box = client.box
    words = line.split()
    if len(words) < 2:
        _reply(client, "-ERR command not found")
        return
    if client.myevents_on:
        _reply(client, "-ERR aready enabled.")
        return
    uuid = words[1]
    if not box.calls.exists(uuid):
        if len(words) > 2:
            _reply(client, "-ERR invalid uuid")
            return
        client.myevents_on = True
        _reply(client, "+OK Events Enabled")
        return
    client.myevents_on = True
    client.myevents = uuid
    client.format = "plain"
    client.events_on = True
    box.calls.watch(uuid, client)
    _reply(client, "+OK Events Enabled")


# An authenticated client's commands: the first entry whose prefix (or one
# of whose prefixes) starts the lower-cased line runs, in parse_command's order.
_COMMANDS: tuple[tuple[str | tuple[str, ...], Callable[[SimClient, Command], None]], ...] = (
    ("filter ", lambda client, cmd: _filter(client, cmd.line[7:])),
    ("sendevent", _sendevent),
    ("api ", lambda client, cmd: _api(client, cmd.line[4:])),
    ("sendmsg", _sendmsg),
    ("bgapi ", lambda client, cmd: _bgapi(client, cmd.line[6:], cmd.header("Job-UUID"))),
    ("log", lambda client, cmd: _log(client, cmd.line[3:])),
    (("linger", "nolinger"), lambda client, cmd: _reply(client, "-ERR not controlling a session")),
    ("event", lambda client, cmd: _event(client, cmd.line)),
    ("divert_events", lambda client, cmd: _reply(client, "-ERR not controlling a session.")),
    ("myevents", lambda client, cmd: _myevents(client, cmd.line)),
    ("nixevent", lambda client, cmd: _nixevent(client, cmd.line)),
    ("noevents", _noevents),
    ("nolog", _nolog),
)

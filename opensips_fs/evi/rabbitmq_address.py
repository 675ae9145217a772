"""`rabbitmq:` subscriber socket strings, as OpenSIPS's event_rabbitmq reads them.

Supports the whole grammar of OpenSIPS 4.1's `rmq_parse`
(docs/protocols/evi.md §4.8):

    rabbitmq:[user[:password]@]host[:port]/[param[;param]…?]routing_key

with params `exchange=NAME`, `persistent` and `tls_domain=NAME` (exact,
case-sensitive). User, password, host, exchange, routing key and TLS domain
are %-unescaped. Defaults: user and password `guest` (a user without a
password also gets `guest`), port 5672 (5671 with `tls_domain`), exchange
`''`. Everything after the first `?` is the routing key, which may then be
empty; without a `?` it must not be.

Identity (re-subscribing, `subscribers_list` with a socket) is host string,
port, user, exchange and routing key: the password, `persistent` and the TLS
domain are not compared. The printed form is
`rabbitmq:user@host/[exchange?]routing_key` (no password, no port).

Deliberately refused where OpenSIPS accepts nonsense: a port over 65535
(OpenSIPS wraps it around at 65536), an empty host (OpenSIPS accepts it
and then fails every raise), and an exchange or routing key longer than the
255 bytes an AMQP short string holds.

Goals: pure text work, one left-to-right pass (linear in the length);
anything malformed gives `None` (the caller answers 400).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .address import Target

__all__ = ["RabbitTarget", "parse_rabbitmq", "wire_name", "DEFAULT_PORT", "DEFAULT_TLS_PORT"]

DEFAULT_PORT = 5672
DEFAULT_TLS_PORT = 5671
DEFAULT_USER = "guest"
SHORTSTR_MAX = 255       # AMQP short string: exchange and routing key
_HEX = "0123456789abcdefABCDEF"


@dataclass(frozen=True)
class RabbitTarget(Target):
    """A parsed `rabbitmq:` socket (host/port in the Target fields)."""

    user: str = DEFAULT_USER
    password: str = DEFAULT_USER
    exchange: str = ""
    routing_key: str = ""
    persistent: bool = False
    tls_domain: str | None = None


class _State(Enum):
    USER_OR_HOST = 1     # text before any ':' '@' '/'
    PASSWORD_OR_PORT = 2  # after the first ':' (a password if '@' follows)
    HOST = 3             # after '@'
    PORT = 4             # after host ':'


def unescape(text: str) -> str | None:
    """%XX decoding as OpenSIPS's un_escape; None on a bad escape."""
    if "%" not in text:
        return text
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "%":
            pair = text[i + 1:i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                return None
            out.append(int(pair, 16))
            i += 3
        else:
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
    return out.decode("utf-8", "surrogateescape")


def _unescaped(text: str | None) -> str | None:
    """unescape() of an optional part; ValueError on a bad escape."""
    if text is None:
        return None
    plain = unescape(text)
    if plain is None:
        raise ValueError(text)
    return plain


def wire_name(text: str) -> bytes:
    """The bytes put on the wire for a name (unescaped bytes kept as they were)."""
    return text.encode("utf-8", "surrogateescape")


def _port(text: str) -> int | None:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def _params(text: str) -> tuple[str, bool, str | None] | None:
    """`exchange=X;persistent;tls_domain=Y` -> (exchange, persistent, tls) or None."""
    exchange = ""
    persistent, tls_domain = False, None
    for item in text.split(";"):
        if item.startswith("exchange=") and len(item) > len("exchange="):
            name = unescape(item[len("exchange="):])
            if name is None:
                return None
            exchange = name
        elif item.startswith("tls_domain=") and len(item) > len("tls_domain="):
            tls_domain = unescape(item[len("tls_domain="):])
            if tls_domain is None:
                return None
        elif item == "persistent":
            persistent = True
        else:
            return None   # unknown, empty, or `exchange=` with no name
    return exchange, persistent, tls_domain


def _split_address(address: str) -> tuple[str | None, str | None, str | None, str | None]:
    """`[user[:password]@]host[:port]` -> (user, password, host, port_text)."""
    state = _State.USER_OR_HOST
    user = password = None
    host = port_text = None
    begin = 0
    first = ""
    for i, ch in enumerate(address):
        if state is _State.USER_OR_HOST:
            if ch == "@":
                user, begin, state = address[begin:i], i + 1, _State.HOST
            elif ch == ":":
                first, begin, state = address[begin:i], i + 1, _State.PASSWORD_OR_PORT
        elif state is _State.PASSWORD_OR_PORT:
            if ch == "@":
                user, password = first, address[begin:i]
                begin, state = i + 1, _State.HOST
        elif state is _State.HOST:
            if ch == ":":
                host, begin, state = address[begin:i], i + 1, _State.PORT
    rest = address[begin:]
    if state is _State.USER_OR_HOST or state is _State.HOST:
        host = rest
    elif state is _State.PASSWORD_OR_PORT:
        host, port_text = first, rest
    else:
        port_text = rest
    return user, password, host, port_text


def parse_rabbitmq(rest: str) -> RabbitTarget | None:
    """Parse what follows `rabbitmq:`; None when malformed."""
    address, slash, path = rest.partition("/")
    if not slash:
        return None
    user, password, host, port_text = _split_address(address)
    params_text, question, routing_key = path.partition("?")
    if question:
        params = _params(params_text)
        if params is None:
            return None
    else:
        if not path:
            return None   # no routing key
        routing_key, params = path, ("", False, None)
    exchange, persistent, tls_domain = params
    try:
        user, password, host = (_unescaped(t) for t in (user, password, host))
        routing_key = _unescaped(routing_key) or ""
    except ValueError:
        return None
    if not host:
        return None       # OpenSIPS accepts it, then fails every raise
    if any(len(wire_name(t)) > SHORTSTR_MAX for t in (exchange, routing_key)):
        return None       # AMQP short strings: the broker would close the channel
    port: int | None
    if port_text is None:
        port = DEFAULT_TLS_PORT if tls_domain is not None else DEFAULT_PORT
    else:
        port = _port(port_text)
        if port is None:
            return None
    if user is None:
        user, password = DEFAULT_USER, DEFAULT_USER
    elif password is None:
        password = DEFAULT_USER
    printed = f"rabbitmq:{user}@{host}/" + (f"{exchange}?" if exchange else "") + routing_key
    match = ("rabbitmq", host, port, user, exchange, routing_key)
    return RabbitTarget("rabbitmq", printed, match, host, port,
                        user=user, password=password, exchange=exchange,
                        routing_key=routing_key, persistent=persistent,
                        tls_domain=tls_domain)

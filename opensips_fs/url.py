"""FreeSWITCH URLs as OpenSIPS's `freeswitch` module parses them (docs/protocols/scripting.md §2).

    [scheme://][[username]:password@]host[:port][/database][?ev1[=v][,ev2]...]

The scheme and database are ignored, the host string is kept verbatim (it is
the socket's identity), an absent or zero port means 8021. Unlike OpenSIPS,
ports above 65535 are refused instead of wrapping around, and the host must
be a hostname (letters, digits, `-`, `_`, dot-separated labels, at most 253
characters), an IPv4 address or a bracketed IPv6 address (`[::1]:8021`; the
host is then the address without brackets, `::1`, as the DB's `ip` column
holds it). Every malformed form raises `UrlError` with a message saying what
is wrong (passwords masked, long values cut).

Pure and sans-IO. Plan: OpenSIPS' rules in its order (docs/protocols/scripting.md §2.1): scheme,
userinfo at the first `@`, `?` params, `/` database, host:port at the first
`:`. Goal: a handful of `str.find`/`partition` calls, linear in the URL
length whatever the input, so a hostile MI caller cannot slow it down.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .logs import bounded, mask_password

DEFAULT_PORT = 8021

__all__ = ["DEFAULT_PORT", "FsUrl", "UrlError", "parse", "valid_host"]

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")
MAX_HOSTNAME = 253


class UrlError(ValueError):
    """A FreeSWITCH URL that cannot be parsed."""


@dataclass(frozen=True)
class FsUrl:
    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = None
    events: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The socket identity as `fs_list` prints it: `host:port`."""
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:  # never show the password
        return f"FsUrl({self.key!r}, username={self.username!r}, events={self.events!r})"


def parse(url: object) -> FsUrl:
    """Parse a FreeSWITCH URL; raise `UrlError` if it is malformed."""
    if not isinstance(url, str):
        raise UrlError("FreeSWITCH URL must be a string")
    if not url:
        raise UrlError("empty FreeSWITCH URL")
    rest = url
    scheme_end = rest.find("://")
    if scheme_end > 0:
        rest = rest[scheme_end + 3:]
    if not rest:
        raise UrlError(f"nothing after the scheme in FreeSWITCH URL {_shown(url)!r}")

    username, password, rest = _split_credentials(rest)

    hostport, _, params = rest.partition("?")
    hostport = hostport.split("/", 1)[0].strip()
    if not hostport:
        raise UrlError(f"empty host in FreeSWITCH URL {_shown(url)!r}")
    if "," in hostport:
        raise UrlError(f"several hosts in FreeSWITCH URL {_shown(url)!r}")

    host, colon, port_text = _split_host(hostport, url)
    port = _parse_port(port_text, url) if colon else 0
    return FsUrl(host=host, port=port or DEFAULT_PORT, username=username,
                 password=password, events=_parse_events(params, url))


def _split_host(hostport: str, url: str) -> tuple[str, str, str]:
    """(host, ":" or "", port text) of `host[:port]` or `[ipv6][:port]`;
    raises `UrlError` for a host that is none of the valid forms."""
    if not hostport.startswith("["):
        host, colon, port_text = hostport.partition(":")
        if not host:
            raise UrlError(f"empty host in FreeSWITCH URL {_shown(url)!r}")
        if not valid_host(host):
            raise UrlError(f"bad host {bounded(host, 64)!r} in FreeSWITCH URL {_shown(url)!r}: "
                           "expected a hostname, an IPv4 address or an IPv6 address in "
                           "brackets ([::1]:8021)")
        return host, colon, port_text
    close = hostport.find("]")
    if close < 0:
        raise UrlError(f"unclosed '[' in FreeSWITCH URL {_shown(url)!r}")
    host, after = hostport[1:close], hostport[close + 1:]
    if after and not after.startswith(":"):
        raise UrlError(f"unexpected {bounded(after, 64)!r} after ']' in FreeSWITCH URL "
                       f"{_shown(url)!r}")
    if not _is_ipv6(host):
        raise UrlError(f"bad IPv6 address {bounded(host, 64)!r} in FreeSWITCH URL {_shown(url)!r}")
    return host, after[:1], after[1:]


def _split_credentials(rest: str) -> tuple[str | None, str | None, str]:
    """(username, password, what follows the `@`) of `[user][:password]@rest`."""
    at = rest.find("@")
    if at <= 0:
        return None, None, rest
    userinfo, rest = rest[:at], rest[at + 1:]
    user, colon, pwd = userinfo.partition(":")
    if not rest:
        raise UrlError("no host after the credentials in FreeSWITCH URL")
    return user or None, (pwd or None) if colon else None, rest


def _parse_port(port_text: str, url: str) -> int:
    if not (port_text.isascii() and port_text.isdigit()):
        raise UrlError(f"bad port {port_text!r} in FreeSWITCH URL {_shown(url)!r}")
    port = int(port_text)
    if port > 65535:
        raise UrlError(f"port {port} out of range (1-65535) in FreeSWITCH URL {_shown(url)!r}")
    return port


def _parse_events(params: str, url: str) -> list[str]:
    """The event names of the `?ev1[=v],ev2…` part (values are ignored)."""
    events: list[str] = []
    if not params.strip():
        return events
    for param in params.split(","):
        key, eq, _value = param.partition("=")
        key = key.strip()
        if not key:
            if eq:
                raise UrlError(f"parameter with an empty name in FreeSWITCH URL {_shown(url)!r}")
            continue
        events.append(key)
    return events


def valid_host(host: str) -> bool:
    """A hostname or an IPv4 address (IPv6 ones come in brackets)."""
    if len(host) > MAX_HOSTNAME or not _HOSTNAME.fullmatch(host):
        return False
    if _DOTTED_NUMBERS.fullmatch(host.rstrip(".")):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
    return True


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _shown(url: str) -> str:
    """The URL for an error message: password masked, length bounded."""
    return bounded(mask_password(url), 200)

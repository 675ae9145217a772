"""OpenSIPS ``db_url`` strings: the one parser, used by the configuration
loader (to refuse a bad URL with FILE:LINE) and by ``db.FsDatabase`` (to
connect).

Supported forms: ``sqlite:///abs/path``, ``sqlite://path/relative/to/the/cfg``,
``mysql://user:pass@host[:port]/db``, ``postgres://user:pass@host[:port]/db``
(``postgresql://`` too). The password is everything between the first ':' of
the user part and the last '@', verbatim, as OpenSIPS reads it. Error texts
never show the password.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .logs import mask_password

__all__ = ["DbUrl", "DbUrlError", "FORMS", "parse_db_url"]

FORMS = ("sqlite:///abs/path, sqlite://path/relative/to/the/cfg, "
         "mysql://user:pass@host[:port]/db, postgres://user:pass@host[:port]/db")

_ENGINES = {"sqlite": "sqlite", "mysql": "mysql", "postgres": "postgres", "postgresql": "postgres"}


class DbUrlError(ValueError):
    """A db_url that cannot be used; the text says why (password masked)."""


@dataclass(frozen=True)
class DbUrl:
    engine: str                 # "sqlite", "mysql" or "postgres"
    database: str               # file path for sqlite, database name otherwise
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = None

    def masked(self) -> str:
        """The URL for log lines and error messages: password replaced by ***."""
        if self.engine == "sqlite":
            return f"sqlite://{self.database}"
        auth = ""
        if self.user is not None:
            auth = self.user + (":***" if self.password else "") + "@"
        port = f":{self.port}" if self.port else ""
        return f"{self.engine}://{auth}{self.host}{port}/{self.database}"

    def __repr__(self) -> str:
        return f"DbUrl({self.masked()!r})"


def parse_db_url(url: str, base_dir: str | None = None) -> DbUrl:
    """Parse a db_url; raise `DbUrlError` saying what is wrong. A relative
    SQLite path is taken from ``base_dir`` (the configuration file's
    folder; the working directory without one)."""
    scheme, sep, rest = (url or "").partition("://")
    engine = _ENGINES.get(scheme.lower())
    if not sep or engine is None:
        raise DbUrlError(f"unsupported db_url {_mask(url)!r}: valid forms are {FORMS}")
    if engine == "sqlite":
        if not rest.strip("/"):
            raise DbUrlError(f"db_url {_mask(url)!r} names no file")
        path = rest if os.path.isabs(rest) else os.path.join(base_dir or os.getcwd(), rest)
        return DbUrl("sqlite", os.path.normpath(path))
    at = rest.rfind("@")
    userinfo, hostpart = (rest[:at], rest[at + 1:]) if at >= 0 else ("", rest)
    hostport, slash, database = hostpart.partition("/")
    if not slash or not database:
        raise DbUrlError(f"db_url {_mask(url)!r} names no database")
    host, colon, port_text = hostport.partition(":")
    if not host:
        raise DbUrlError(f"db_url {_mask(url)!r} names no host")
    port = None
    if colon:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) <= 65535:
            raise DbUrlError(f"bad port {port_text!r} in db_url {_mask(url)!r}")
        port = int(port_text)
    user = password = None
    if at >= 0:
        user, _, password = userinfo.partition(":")
        user, password = user or None, password or None  # verbatim, as OpenSIPS
    return DbUrl(engine, database, host=host, port=port, user=user, password=password)


def _mask(url: object) -> str:
    return mask_password(str(url or ""))

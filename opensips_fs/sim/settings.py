"""How one simulated FreeSWITCH box is set up: ``SimSettings`` (everything
``FsSimulator`` is built from) and ``SimUser`` (a directory user for
``userauth``).

The settings are what the box starts with; what changes while it runs (the
bound port, the password set by the ``password`` control op, the Core-UUID
after a restart) lives on the box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

__all__ = ["SimSettings", "SimUser"]


@dataclass
class SimUser:
    """A directory user for ``userauth`` with the esl-allowed-* limits.

    ``events``: None (all) or the esl-allowed-events words (a list or one
    space-separated string; words after CUSTOM are subclasses);
    ``api``: None (all) or the allowed API command names; ``log``: esl-allowed-log.
    """

    name: str  # "user@domain"
    password: str
    events: list[str] | str | None = None
    api: list[str] | str | None = None
    log: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.events, str):
            self.events = self.events.split()
        if isinstance(self.api, str):
            self.api = [a.strip() for a in self.api.split(",") if a.strip()]

    def allowed_event_names(self) -> list:
        names = []
        for word in self.events or ():
            names.append(word)
            if word.upper() == "CUSTOM":
                break
        return names

    def allowed_subclasses(self) -> set:
        words = self.events or []
        upper = [w.upper() for w in words]
        if "CUSTOM" not in upper:
            return set()
        return set(words[upper.index("CUSTOM") + 1:])


@dataclass(frozen=True)
class SimSettings:
    """One box's set-up; every field has FreeSWITCH's default or the
    simulator's usual one, so tests name only what they change."""

    # where it listens (port 0: ephemeral, the box's ``port`` tells which)
    host: str = "127.0.0.1"
    port: int = 0
    # who may log in: ``auth`` with this password (None: every auth fails)
    # and the ``userauth`` users
    password: str | None = "ClueCon"
    users: list[SimUser] = field(default_factory=list)
    # FreeSWITCH wants userauth user@domain:pass; the OpenSIPS recordings'
    # stand-ins also took user:pass (False here)
    userauth_requires_domain: bool = True
    # apply-inbound-acl: peers outside these networks (CIDR strings) get the
    # rude rejection; None accepts everyone
    acl: list[str] | None = None
    auth_timeout: float = 25.0  # seconds a new connection has to authenticate

    # who the box says it is
    hostname: str = "vm"
    core_uuid: str | None = None  # None: a new random one per run
    ipv4: str = "127.0.0.1"
    ipv6: str = "::1"
    version: str = "1.11.3-dev"  # a key of events.VERSIONS (or a FsVersion)
    max_sessions: int = 1000
    idle_cpu: float | None = None  # fixed Idle-CPU figure; None: measured

    # timers and generated load
    heartbeat: float = 20.0  # HEARTBEAT + RE_SCHEDULE interval; 0: none
    calls_per_second: float = 0.0  # synthetic two-leg calls per second
    call_duration: float = 1.0  # how long each simulated call stays up
    shutdown_delay: float = 0.8  # ``fsctl shutdown`` -> the shutdown notice

    # FreeSWITCH's slow-consumer rule: per-connection event queue and the
    # consecutive losses tolerated before the kill
    queue_size: int = 100000
    max_lost: int = 500

    # what the box remembers for ``state()`` and tests
    record_limit: int = 16 * 1024 * 1024  # bytes kept per connection and direction
    keep_closed: int | None = None  # closed connections kept; None: all

    # reproducible runs: the uuid generator's seed and the wall clock
    seed: int | None = None
    clock: Callable[[], float] | None = None  # None: time.time

    # called with the box once a shutdown has closed every connection
    on_shutdown: Callable | None = None

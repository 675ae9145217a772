"""One FreeSWITCH socket's life: credentials, login, reconnects with
backoff, commands, and routing its events (OpenSIPS's `fs_proc.c` side of
the `freeswitch` module; the bookkeeping of its events is
`subscriptions.py`, the set of sockets is `manager.py`).

* A supervisor greenlet per socket connects, logs in, subscribes, serves,
  and reconnects: at once after the loss of a connection that had lived
  `stable_after` seconds; otherwise — a refused connection, a refused
  login, or a connection that died within `stable_after` of its login — it
  waits 1, 2, 4 … s up to `max_gap` (`backoff_gap()`, with a little
  jitter so that many sockets do not retry in step).
* A failing socket logs one WARNING when it starts failing (a refused
  connection and a refused login alike), a reminder every
  `failure_reminder` seconds, and one NOTICE once it is connected again.
* New credentials for a failing socket (`update_credentials()`) cut its wait
  short: the next attempt starts at once and callers may wait for it.
* After every (re)connection all subscribed names are sent again, and events
  are held until FreeSWITCH has answered all of them; then delivery resumes.
* Events: each `text/event-json` frame's `Event-Name` is read without a JSON
  parse (the verdict per name is cached, at most `ROUTE_CACHE_SIZE` names);
  subscribed ones go to the owner's `deliver(socket, name, body)` in the
  reader greenlet; everything else is dropped and counted. HEARTBEAT
  refreshes the socket's load figures.
* The socket talks to its owner (the manager) only through the public
  methods of `SocketOwner`.
"""

from __future__ import annotations

import datetime
import enum
import logging
import random
import time
from dataclasses import dataclass
from typing import Protocol

import gevent
import gevent.event
import orjson

from ..logs import NOTICE
from ..stats import Counter, Stats
from .connection import (
    EslAuthError,
    EslConnectError,
    EslConnection,
    EslError,
    EslLoginRefused,
    EslNotConnected,
    EslReply,
    EslTimeout,
)
from .protocol import CT_EVENT_JSON, DEFAULT_MAX_BODY, Frame, command_text, event_name, printable
from .subscriptions import Subscription, Subscriptions
from .throttle import LogThrottle

__all__ = [
    "ESL_ONLY_MAX_ATTEMPTS",
    "EslCounters",
    "EslSocket",
    "SocketOwner",
    "SocketSettings",
    "SocketState",
    "backoff_gap",
]

log = logging.getLogger("opensips_fs.esl")

STATS_GROUP = "freeswitch"
ESL_ONLY_MAX_ATTEMPTS = 100
HOLD_LIMIT = 100_000  # events held while resubscribing after a reconnect
ROUTE_CACHE_SIZE = 1024  # distinct Event-Names whose verdict a socket remembers


class SocketState(enum.StrEnum):
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    CLOSED = "closed"


@dataclass(frozen=True)
class SocketSettings:
    """What every socket of one manager shares (seconds, bytes)."""

    connect_timeout: float = 5.0
    cmd_timeout: float = 5.0
    max_body: int = DEFAULT_MAX_BODY
    liveness_timeout: float = 30.0
    idle_probe: float = 10.0
    busy_timeout: float = 300.0
    stable_after: float = 5.0       # a connection younger than this that dies counts as a failure
    max_gap: float = 60.0           # longest wait between two connection attempts
    failure_reminder: float = 300.0  # a failing socket says so again this often


def backoff_gap(failures: int, max_gap: float = 60.0) -> float:
    """Seconds before the next connection attempt after `failures`
    consecutive failures: none after 0, then 1, 2, 4 … up to `max_gap`."""
    if failures <= 0:
        return 0.0
    return float(min(max_gap, 2 ** min(failures - 1, 30)))


class EslCounters:
    """The process-wide `freeswitch` statistics the sockets move."""

    def __init__(self, stats: Stats):
        def counter(name: str, help: str) -> Counter:
            return stats.counter(STATS_GROUP, name, help)

        self.events_received = counter("events_received", "events read from FreeSWITCH")
        self.events_relayed = counter("events_relayed", "events handed to subscribers (E_FREESWITCH and ESL consumers)")
        self.events_dropped = counter("events_dropped", "events dropped (malformed, not subscribed, no route)")
        self.events_queue_dropped = counter("events_queue_dropped",
                                            "events dropped because a consumer's queue was full")
        self.reconnects = counter("reconnects", "ESL connections re-established after a loss")
        self.connect_failures = counter("connect_failures", "ESL connection attempts that failed")
        self.login_failures = counter("login_failures", "ESL logins refused by FreeSWITCH")
        self.commands = counter("commands", "ESL commands sent")
        self.command_timeouts = counter("command_timeouts", "ESL commands that got no reply in time")
        self.subscribe_rejected = counter("subscribe_rejected", "event subscriptions FreeSWITCH refused")
        self.late_replies = counter("late_replies", "ESL replies that came after their command timed out")
        self.sink_errors = counter("sink_errors", "events a subscriber's handler failed on")
        self.oversized_frames = counter("oversized_frames", "ESL frames over esl_max_frame_size (connection dropped)")


class SocketOwner(Protocol):
    """What a socket needs from its manager."""

    settings: SocketSettings
    counters: EslCounters

    @property
    def running(self) -> bool: ...

    def deliver(self, sock: "EslSocket", name: str, body: bytes) -> None: ...

    def bad_event(self, sock: "EslSocket", body: bytes) -> None: ...

    def give_up(self, sock: "EslSocket", reason: str) -> None: ...

    def revive(self, sock: "EslSocket") -> None: ...


class EslSocket:
    """One FreeSWITCH (host string, port): connection, credentials,
    references, subscriptions, load figures."""

    def __init__(self, owner: SocketOwner, host: str, port: int, username: str | None, password: str):
        self._owner = owner
        self._settings = owner.settings
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.username = username or None
        self._password = password
        self.db_provisioned = False
        self.refs = 0
        self.esl_used = False
        self.created = time.monotonic()
        self.last_command = 0.0
        self.state = SocketState.CLOSED
        self.attempts = 0  # consecutive failed connection attempts (reset by a login)
        self.last_error = ""
        self.login_refused = False  # the last attempt failed because FreeSWITCH refused the login
        self.connected_since: float | None = None  # epoch seconds
        self.closed = False
        self._streak = 0  # consecutive failures for the backoff (reset by a stable connection)
        self._failing_since: float | None = None
        self._reminded = 0.0
        self._subs = Subscriptions()
        self._route: dict[str, bool] = {}  # FreeSWITCH's Event-Name -> deliver?
        self._conn: EslConnection | None = None
        self._supervisor: gevent.Greenlet | None = None
        self._wake = gevent.event.Event()
        self._retry = gevent.event.Event()  # cut a backoff wait short (retry_now, close)
        self._stop = gevent.event.Event()
        self._attempted = gevent.event.Event()  # the current connection attempt is over
        self._holding: list | None = None
        self._heartbeat_warnings = LogThrottle()
        self._oversize_warnings = LogThrottle()
        # load figures from the last HEARTBEAT
        self.idle_cpu: float | None = None
        self.session_count: int | None = None
        self.max_sessions: int | None = None
        self._heartbeat: dict | None = None
        self._heartbeat_at = 0.0
        # per-socket counters (status(), counters())
        self.events_received = 0
        self.events_relayed = 0
        self.events_dropped = 0
        self.events_queue_dropped = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.login_failures = 0
        self.commands = 0
        self.command_timeouts = 0
        self._hand_on = owner.deliver
        counters = owner.counters
        self._counters = counters
        self._c_received = counters.events_received
        self._c_relayed = counters.events_relayed
        self._c_dropped = counters.events_dropped

    def __repr__(self) -> str:
        return f"EslSocket({self.name!r}, state={self.state.value!r}, refs={self.refs})"

    # -- credentials (docs/protocols/scripting.md §2.3) ---------------------------------------------

    def update_credentials(self, username: str | None, password: str | None, from_db: bool = False) -> bool:
        """A later URL (or DB row) naming this socket: the username is replaced
        or cleared, the password replaced only when given. URLs no longer
        change a DB-provisioned socket; a DB row marks it so. Used from the
        next connection attempt on — at once if the socket is failing to
        connect. True if the credentials changed."""
        if self.db_provisioned and not from_db:
            return False
        if from_db:
            self.db_provisioned = True
        username = username or None
        changed = username != self.username or bool(password and password != self._password)
        self.username = username
        if password:
            self._password = password
        if changed:
            self.retry_now()
        return changed

    def release_db_provisioning(self) -> None:
        """The DB row that provisioned this socket is gone: later URLs set its
        credentials again."""
        self.db_provisioned = False

    # -- references and lifetime -----------------------------------------------

    def ref(self) -> None:
        """One more scripting entry uses this socket: keep it connected."""
        if self.closed:
            self._owner.revive(self)
        self.refs += 1
        self.start()

    def unref(self) -> None:
        """One entry less; the last one closes the socket at once (no
        `nixevent`) unless `command()` used it."""
        if self.refs <= 0:
            return
        self.refs -= 1
        if self.refs == 0 and not self.esl_used:
            self._owner.give_up(self, "no longer referenced")

    def reopen(self) -> None:
        """Make a closed socket usable again (the manager re-registers it)."""
        self.closed = False
        self._stop = gevent.event.Event()
        self.state = SocketState.CLOSED
        self.created = time.monotonic()

    def idle_for(self, now: float) -> float:
        """Seconds since this socket was created or last ran a command."""
        return now - (self.last_command if self.esl_used else self.created)

    # -- subscriptions ----------------------------------------------------------

    def subscribe(self, name: str) -> None:
        """One more reference on event `name` (sent as given)."""
        if self._subs.add(name):
            self._route.clear()
            self._wake.set()

    def unsubscribe(self, name: str) -> bool:
        """One reference less on `name`; False if it had none."""
        changed = self._subs.remove(name)
        if changed is None:
            return False
        if changed:
            self._route.clear()
            self._wake.set()
        return True

    def subscribed(self) -> list[str]:
        """Names with a reference, first-subscribed order."""
        return self._subs.names()

    def event_refs(self, name: str) -> int:
        return self._subs.refs(name)

    def settled(self) -> bool:
        """Connected, and FreeSWITCH answered every subscription at least once."""
        return self.connected and self._subs.settled()

    # -- commands ----------------------------------------------------------------

    def command(self, text: str, timeout: float | None = None) -> EslReply:
        """Run one ESL command (text without its blank line) and return its
        reply. A socket making a connection attempt is waited for up to
        `esl_connect_timeout`. Raises EslNotConnected (EslLoginRefused when
        FreeSWITCH refuses the login), EslTimeout or EslReplyTooLarge;
        ValueError for a text that is empty or holds an empty line."""
        text = command_text(text)  # CommandTextError is a ValueError
        settings = self._settings
        self.commands += 1
        self._counters.commands.value += 1
        self.esl_used = True
        self.last_command = time.monotonic()
        if self.closed:
            raise EslNotConnected(f"{self.name} is closed")
        self.start()
        conn = self._conn
        if conn is None or not conn.connected:
            self.wait_attempt()
            conn = self._conn
            if conn is None or not conn.connected:
                detail = f": {self.last_error}" if self.last_error else ""
                error = EslLoginRefused if self.login_refused else EslNotConnected
                raise error(f"{self.name} is not connected{detail}")
        if timeout is None:
            timeout = settings.cmd_timeout
        try:
            return conn.command(text, timeout)
        except EslTimeout:
            self.command_timeouts += 1
            self._counters.command_timeouts.value += 1
            raise
        finally:
            self.last_command = time.monotonic()

    def wait_attempt(self, timeout: float | None = None) -> bool:
        """Wait (up to `esl_connect_timeout`) for a connection attempt under
        way to end; True if the socket is connected."""
        if self.state in (SocketState.CONNECTING, SocketState.AUTHENTICATING):
            self._attempted.wait(self._settings.connect_timeout if timeout is None else timeout)
        return self.connected

    def retry_now(self) -> bool:
        """A socket waiting before its next connection attempt starts it at
        once; False if it was not waiting."""
        if self.closed or self.state is not SocketState.BACKOFF:
            return False
        self._attempted.clear()
        self.state = SocketState.CONNECTING
        self._retry.set()
        return True

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.connected

    def check_liveness(self, now: float) -> None:
        """Let the connection probe or drop a silent peer (the manager's tick)."""
        conn = self._conn
        if conn is not None:
            conn.check_liveness(now)

    def count_queue_drop(self) -> None:
        """A consumer's queue was full: one event of this socket lost there."""
        self.events_queue_dropped += 1
        self._counters.events_queue_dropped.value += 1

    # -- status --------------------------------------------------------------------

    def status(self) -> dict:
        """One `fs_status` entry (docs/protocols/scripting.md §9); never any credential."""
        active, pending = self._subs.split()
        since = None
        if self.connected_since is not None:
            since = datetime.datetime.fromtimestamp(self.connected_since, datetime.timezone.utc) \
                .isoformat(timespec="seconds").replace("+00:00", "Z")
        heartbeat = None
        if self._heartbeat is not None:
            heartbeat = dict(self._heartbeat)
            heartbeat["age_s"] = int(time.monotonic() - self._heartbeat_at)
        return {
            "if": self.name,
            "state": self.state.value,
            "refs": self.refs,
            "events": active,
            "pending": pending,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "connected_since": since,
            "heartbeat": heartbeat,
            "esl_used": self.esl_used,
            "events_received": self.events_received,
            "events_relayed": self.events_relayed,
            "events_dropped": self.events_dropped,
            "events_queue_dropped": self.events_queue_dropped,
            "reconnects": self.reconnects,
            "commands": self.commands,
            "command_timeouts": self.command_timeouts,
        }

    def counters(self) -> dict:
        """Read-only figures for monitoring (metrics): counters since the
        socket was created, and its current connection and subscriptions."""
        active, pending = self._subs.split()
        return {
            "socket": self.name,
            "events_received": self.events_received,
            "events_relayed": self.events_relayed,
            "events_dropped": self.events_dropped,
            "events_queue_dropped": self.events_queue_dropped,
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
            "login_failures": self.login_failures,
            "connected": self.connected,
            "subscribed": len(active),
            "pending": len(pending),
        }

    def route_cache_size(self) -> int:
        """Distinct event names whose verdict is remembered (bounded)."""
        return len(self._route)

    # -- supervisor --------------------------------------------------------------

    def start(self) -> None:
        """Start connecting, unless already at it (or closed)."""
        if self._supervisor is None and not self.closed and self._owner.running:
            self.state = SocketState.CONNECTING
            self._supervisor = gevent.spawn(self._run, self._stop)

    def close(self, reason: str) -> None:
        """Close the connection and stop the supervisor (no `nixevent`)."""
        if self.closed:
            return
        self.closed = True
        self.state = SocketState.CLOSED
        self._stop.set()
        self._retry.set()  # ends a backoff wait
        supervisor, self._supervisor = self._supervisor, None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(reason)
            self._count_late(conn)
        self._attempted.set()
        self.connected_since = None
        self._subs.connection_lost()
        self._route.clear()
        held, self._holding = self._holding, None
        if held:
            self._drop(len(held))
        if supervisor is not None and supervisor is not gevent.getcurrent():
            supervisor.kill(block=False)

    def _run(self, stop: gevent.event.Event) -> None:
        """Connect, serve, reconnect, until `stop` is set (by close())."""
        settings = self._settings
        while not stop.is_set():
            conn = EslConnection(
                self.host, self.port, connect_timeout=settings.connect_timeout, on_frame=self._on_frame,
                max_body=settings.max_body, liveness_timeout=settings.liveness_timeout,
                idle_probe=settings.idle_probe, busy_timeout=settings.busy_timeout, label=self.name)
            self.state = SocketState.CONNECTING
            self._attempted.clear()
            self._retry.clear()
            self._holding = []
            failure: tuple[str, bool] | None = None
            try:
                conn.open(self.username, self._password, on_authenticating=self._authenticating)
            except Exception as exc:  # EslConnectError, or a bug: never lose the socket
                if stop.is_set():
                    return
                if not isinstance(exc, EslConnectError):
                    log.error("ESL %s: connection attempt failed: %r", self.name, exc)
                    exc = EslConnectError(f"connection attempt failed: {type(exc).__name__}")
                failure = (str(exc), isinstance(exc, EslAuthError))
            if failure is not None:
                # only the reason outlives the attempt: its connection, exception
                # and traceback are not kept through the backoff wait
                del conn
                if not self._attempt_failed(*failure):
                    return
                continue
            if stop.is_set():
                conn.close("socket closed")
                return
            self._logged_in(conn)
            stable = self._serve(conn, stop)
            if stop.is_set():
                return  # close() cleaned up
            self._lost(conn, stable)

    def _attempt_failed(self, reason: str, login_refused: bool) -> bool:
        """Count a failed attempt, log it, wait; False if the socket gave up."""
        counters = self._counters
        self._holding = None
        self.attempts += 1
        self._streak += 1
        self.last_error = reason
        self.login_refused = login_refused
        self.connect_failures += 1
        counters.connect_failures.value += 1
        if self.login_refused:
            self.login_failures += 1
            counters.login_failures.value += 1
        self._attempted.set()
        if self.refs == 0 and (not self.esl_used or self.attempts >= ESL_ONLY_MAX_ATTEMPTS):
            self._owner.give_up(self, "gave up connecting")
            return False
        gap = backoff_gap(self._streak, self._settings.max_gap)
        self._failing(reason, gap)
        self._backoff(gap)
        return True

    def _logged_in(self, conn: EslConnection) -> None:
        self._conn = conn
        self.attempts = 0
        self.last_error = ""
        self.login_refused = False
        self.connected_since = time.time()
        self.state = SocketState.CONNECTED
        if self._failing_since is None:
            log.info("ESL %s: connected", self.name)
        else:
            log.info("ESL %s: logged in (after failures; healthy once it lasts %g s)",
                     self.name, self._settings.stable_after)
        self._attempted.set()

    def _stable(self) -> None:
        """The connection outlived `stable_after`: the failures are over."""
        self._streak = 0
        if self._failing_since is not None:
            log.log(NOTICE, "ESL %s: connected again after %.0f s of failures", self.name,
                    time.monotonic() - self._failing_since)
            self._failing_since = None

    def _lost(self, conn: EslConnection, stable: bool) -> None:
        self._conn = None
        self.connected_since = None
        self._subs.connection_lost()
        held, self._holding = self._holding, None
        if held:
            self._drop(len(held))
        self._count_late(conn)
        self.reconnects += 1
        self._counters.reconnects.value += 1
        self.last_error = conn.lost_reason or "connection lost"
        if stable:
            log.warning("ESL %s: %s; reconnecting", self.name, self.last_error)
            return
        # died young: a peer that accepts the login and drops us must not
        # make us reconnect in a tight loop
        gap = backoff_gap(self._streak, self._settings.max_gap)
        self._streak += 1
        self._failing(f"{self.last_error} (within {self._settings.stable_after:g} s of the login)", gap)
        self._backoff(gap)

    def _failing(self, reason: str, gap: float) -> None:
        """Log a failure: at once when the socket starts failing, then a
        reminder every `failure_reminder` s; the rest at debug level."""
        now = time.monotonic()
        retry = f"retrying in {gap:g} s" if gap else "retrying at once"
        if self._failing_since is None:
            self._failing_since = self._reminded = now
            log.warning("ESL %s: %s; %s", self.name, reason, retry)
        elif now - self._reminded >= self._settings.failure_reminder:
            self._reminded = now
            log.warning("ESL %s: still failing after %.0f s (%d attempts): %s; %s", self.name,
                        now - self._failing_since, self.attempts, reason, retry)
        else:
            log.debug("ESL %s: %s; %s", self.name, reason, retry)

    def _backoff(self, gap: float) -> None:
        if gap <= 0:
            return
        self.state = SocketState.BACKOFF
        gap *= 1.0 + random.random() * 0.1  # many sockets failing together do not retry in step
        self._retry.wait(gap)  # close() sets it too: one event, one timer per wait

    def _count_late(self, conn: EslConnection) -> None:
        if conn.late_replies:
            self._counters.late_replies.value += conn.late_replies
            conn.late_replies = 0

    def _authenticating(self) -> None:
        self.state = SocketState.AUTHENTICATING

    def _serve(self, conn: EslConnection, stop: gevent.event.Event) -> bool:
        """Resubscribe everything, release held events, then keep the wire
        subscriptions in step with the reference sums until the connection
        ends. True if the connection lived `stable_after` seconds."""
        stable_at = time.monotonic() + self._settings.stable_after
        self._sync(conn)
        if not conn.connected or stop.is_set():
            return time.monotonic() >= stable_at
        held, self._holding = self._holding, None
        deliver = self._deliver
        for body in held or ():
            deliver(body)
        stable = False
        while conn.connected and not stop.is_set():
            now = time.monotonic()
            if not stable and now >= stable_at:
                stable = True
                self._stable()
            timeout = self._subs.next_retry(now)
            if not stable:
                timeout = min(timeout, stable_at - now) if timeout is not None else stable_at - now
            gevent.wait([self._wake, conn.closed, stop], count=1, timeout=timeout)
            self._wake.clear()
            if conn.connected and not stop.is_set():
                self._sync(conn)
        return stable

    def _sync(self, conn: EslConnection) -> None:
        """Send what the reference sums ask for, pipelined, one command per
        event in first-subscribed order; repeat until nothing changes."""
        timeout = self._settings.cmd_timeout
        subs = self._subs
        while conn.connected:
            batch = subs.next_commands(time.monotonic())
            if not batch:
                return
            try:
                waiters = [(sub, conn.send(text, user=False, timeout=timeout)) for sub, text in batch]
            except (EslNotConnected, EslTimeout) as exc:
                # whatever was half done is redone on the next connection
                conn.close(f"could not send a subscription command: {exc}")
                return
            for sub, waiter in waiters:
                try:
                    reply = conn.wait(waiter, timeout)
                except EslTimeout:
                    conn.close(f"no reply to a subscription command within {timeout:g} s")
                    return
                except EslError:
                    return
                self._on_sub_reply(sub, reply.reply_text or "")

    def _on_sub_reply(self, sub: Subscription, text: str) -> None:
        outcome = self._subs.on_reply(sub, text, time.monotonic())
        if outcome is None:
            return
        shown = printable(text)
        if outcome.refused:
            self._counters.subscribe_rejected.value += 1
            self.last_error = f"FreeSWITCH refused event {outcome.name!r}: {shown}"
            if outcome.gap_changed:
                log.warning("ESL %s: FreeSWITCH refused 'event json %s' (%s); retrying every %g s",
                            self.name, printable(outcome.name), shown, outcome.retry_gap)
            return
        if outcome.unexpected:
            log.info("ESL %s: unexpected reply to 'event json %s': %s", self.name,
                     printable(outcome.name), shown)
        if outcome.recovered:
            log.info("ESL %s: event %s accepted after %d refusals", self.name, printable(outcome.name),
                     outcome.recovered)

    # -- incoming events (reader greenlet) -------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        """Every frame that is not a reply (reader greenlet, hot path)."""
        self.events_received += 1
        self._c_received.value += 1
        body = frame.body
        if frame.content_type != CT_EVENT_JSON or body is None:
            self._drop()
            if frame.oversize:
                self._oversized(frame)
            return
        if self._holding is not None:
            if len(self._holding) < HOLD_LIMIT:
                self._holding.append(body)
            else:
                self._drop()
            return
        self._deliver(body)

    def _deliver(self, body: bytes) -> None:
        name = event_name(body)
        if name is None:
            self._drop()
            self._owner.bad_event(self, body)
            return
        route = self._route.get(name)
        if route is None:
            route = self._subs.wants(name.lower())
            if len(self._route) >= ROUTE_CACHE_SIZE:
                self._route.clear()  # a peer inventing names cannot grow it
            self._route[name] = route
        if name == "HEARTBEAT":
            self._on_heartbeat(body)
        if not route:
            self._drop()
            return
        self.events_relayed += 1
        self._c_relayed.value += 1
        self._hand_on(self, name, body)

    def _drop(self, n: int = 1) -> None:
        self.events_dropped += n
        self._c_dropped.value += n

    def _oversized(self, frame: Frame) -> None:
        self._counters.oversized_frames.value += 1
        if self._oversize_warnings.hit():
            log.warning("ESL %s: dropped a %s frame of %d bytes, over the %d-byte esl_max_frame_size "
                        "(%d more since the last such warning)", self.name,
                        printable(frame.content_type or "untyped"), frame.oversize,
                        self._settings.max_body, self._oversize_warnings.take_suppressed())

    def _on_heartbeat(self, body: bytes) -> None:
        try:
            data = orjson.loads(body)
            idle = data["Idle-CPU"]
            count = data["Session-Count"]
            limit = data["Max-Sessions"]
            self.idle_cpu = float(idle)
            self.session_count = int(count)
            self.max_sessions = int(limit)
        except (ValueError, KeyError, TypeError):
            if self._heartbeat_warnings.hit():
                log.warning("ESL %s: HEARTBEAT without usable Idle-CPU/Session-Count/Max-Sessions "
                            "(%d more since the last such warning)", self.name,
                            self._heartbeat_warnings.take_suppressed())
            return
        self._heartbeat = {"Idle-CPU": idle, "Session-Count": count, "Max-Sessions": limit}
        self._heartbeat_at = time.monotonic()

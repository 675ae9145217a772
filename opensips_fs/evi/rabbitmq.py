"""`event_rabbitmq` delivery: `rabbitmq:` subscribers published to a RabbitMQ broker.

What goes on the wire is what OpenSIPS's event_rabbitmq means to send
(docs/protocols/evi.md §4.8): per notification one `basic.publish` on
channel 1 to the socket's exchange (default `''`) with its routing key,
`mandatory` set, the body byte for byte the `event_datagram` payload, and
no properties at all unless the socket says `persistent` (then only
`delivery_mode=2`). One AMQP connection per destination (a subscriber
socket), PLAIN login, vhost `/`.

Where we do better than OpenSIPS (each a recorded OpenSIPS loss):
* the connection is opened on the first notification and re-opened with a
  backoff capped at 1 s while the broker is down; notifications wait in the
  destination's bounded queue meanwhile and go out in order afterwards;
* publisher confirms: a notification counts as sent only once the broker
  acked it; what was unconfirmed when the connection died is published
  again first on the next connection — at-least-once, each re-publish a
  possible duplicate, counted in `retried`; a `basic.nack` re-publishes too;
* `heartbeat` N really sends heartbeats (every N/2 s of silence) and a broker
  silent for two intervals is declared dead; `timeout` (ms) reconnects when
  a publish stays unconfirmed that long;
* a refused login, a missing exchange (channel closed 404) or any other
  broker error is a send error logged with the broker's reason (once while it
  repeats), shown as `last_error` in `evi_status`, and retried, so fixing the
  broker side recovers without a restart; an unroutable message
  (`basic.return`) is counted in `returned` (and `dropped`) with its reason;
* TLS (`tls_domain=` sockets, with `use_tls`) uses our CA/cert/key modparams.

Built on `amqp` (py-amqp, the Celery project's AMQP 0-9-1 client): plain
blocking sockets, which are gevent's once the entry point has patched the
standard library, so one greenlet reads (acks, returns, closes) while the
sender greenlet publishes; writes are serialised by a lock so a heartbeat
never lands inside a frame.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import amqp
import gevent
from amqp import method_framing, serialization, spec
from gevent.event import Event
from gevent.lock import BoundedSemaphore

from ..reasons import short_reason
from .confirms import ConfirmLedger
from .delivery import BACKOFF_FIRST, BACKOFF_MAX, Destination, EviCounters
from .rabbitmq_address import RabbitTarget, wire_name

if TYPE_CHECKING:
    from ..config import EventRabbitmqSettings

__all__ = ["RabbitmqDestination", "CONFIRM_WINDOW", "label_of"]

log = logging.getLogger(__name__)

CONFIRM_WINDOW = 1024        # unconfirmed publishes in flight per connection
_PUBLISH = spec.Basic.Publish


class _Connection(amqp.Connection):
    """py-amqp's connection without the `connection.blocked` extension: with
    it, every publish reads the socket itself (drain_events(timeout=0)),
    which here is the reader greenlet's job alone. A broker that blocks
    publishers then simply stops reading: the queue takes the backlog."""

    negotiate_capabilities = {name: on for name, on in
                              amqp.Connection.negotiate_capabilities.items()
                              if name != "connection.blocked"}


def label_of(target: RabbitTarget) -> str:
    """The destination's name in `evi_status` and logs: no password."""
    route = (f"{target.exchange}?" if target.exchange else "") + target.routing_key
    return f"rabbitmq:{target.user}@{target.host}:{target.port}/{route}"


def describe(exc: BaseException) -> str:
    """The broker's reason when there is one, else the exception's text."""
    code = getattr(exc, "reply_code", None)
    text = getattr(exc, "reply_text", None)
    if code and text:
        return f"broker: {code} {text}"
    return short_reason(exc)


class _Writer(Protocol):
    """What frames are written to (py-amqp's transport)."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...


class _BatchingTransport:
    """What py-amqp's frame writer writes to. Between `hold()` and `flush()`
    the frames are collected and sent with one write: a batch of publishes
    costs one system call instead of one each."""

    def __init__(self, transport: _Writer):
        self.transport = transport
        self.parts: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.parts is None:
            self.transport.write(data)
        else:
            self.parts.append(bytes(data))   # the writer reuses its buffer

    def hold(self) -> None:
        self.parts = []

    def flush(self) -> None:
        parts, self.parts = self.parts, None
        if parts:
            self.transport.write(b"".join(parts))


class _Link:
    """One AMQP connection + channel 1 in confirm mode, and its greenlets."""

    def __init__(self, conn: _Connection, channel: amqp.Channel, writes: _BatchingTransport):
        self.conn = conn
        self.channel = channel
        self.writes = writes
        self.write_lock = BoundedSemaphore()
        self.broken: str | None = None
        self.greenlets: list[gevent.Greenlet] = []

    def abort(self) -> None:
        """Close the socket at once (wakes greenlets blocked on it)."""
        try:
            self.conn.collect()
        except Exception:   # already gone: nothing to release
            pass

    def close(self) -> None:
        current = gevent.getcurrent()
        for greenlet in self.greenlets:
            if greenlet is not current:
                greenlet.kill(block=False)
        self.abort()


class RabbitmqDestination(Destination):
    transport = "rabbitmq"
    log = log
    batch = 256

    def __init__(self, key: tuple, label: str, queue_size: int, counters: EviCounters, target: RabbitTarget,
                 settings: EventRabbitmqSettings, **limits: Any):
        super().__init__(key, label, queue_size, counters, **limits)
        self.target = target
        self.settings = settings
        self.returned = 0
        self.ledger = ConfirmLedger()
        self._exchange = wire_name(target.exchange)
        self._routing_key = wire_name(target.routing_key)
        self._properties = {"delivery_mode": 2} if target.persistent else {}
        self._publish_arguments = serialization.dumps(
            "Bssbb", (0, self._exchange, self._routing_key, True, False))   # ticket, …, mandatory
        self._progress = Event()
        self._waiting = False
        self._relink_delay = 0.0
        self._relink_at = 0.0
        self._link: _Link | None = None     # the current connection

    # -- producer side ----------------------------------------------------
    def put(self, payload: bytes) -> None:
        super().put(payload)
        if self._waiting:
            self._progress.set()

    @property
    def queued(self) -> int:
        return len(self.queue) + len(self.inflight) + len(self.ledger)

    def status(self) -> dict:
        status = super().status()
        status["returned"] = self.returned
        status["unconfirmed"] = len(self.ledger)
        return status

    def drop_queued(self, why: str) -> None:
        self.inflight = self.ledger.take_unconfirmed() + self.inflight
        super().drop_queued(why)

    # -- connection -------------------------------------------------------
    def _ssl_options(self) -> dict[str, object] | bool:
        if self.target.tls_domain is None:
            return False
        s = self.settings
        options: dict[str, object] = {"server_hostname": self.target.host,
                                      "cert_reqs": ssl.CERT_REQUIRED if s.verify_cert else ssl.CERT_NONE}
        if s.tls_ca_file:
            options["ca_certs"] = s.tls_ca_file
        if s.tls_cert_file:
            options["certfile"] = s.tls_cert_file
            options["keyfile"] = s.tls_key_file
        return options

    def _open(self) -> _Link:
        t, s = self.target, self.settings
        self.state = "connecting"
        writes: list[_BatchingTransport] = []

        def frame_writer(connection: amqp.Connection, transport: _Writer) -> Callable[..., object]:
            writes.append(_BatchingTransport(transport))
            return method_framing.frame_writer(connection, writes[-1])

        conn = _Connection(
            host=f"{t.host}:{t.port}", userid=t.user, password=t.password,
            virtual_host="/", login_method="PLAIN", heartbeat=s.heartbeat,
            connect_timeout=s.connect_timeout / 1000.0, ssl=self._ssl_options(),
            client_properties={"product": "opensips-fs"}, frame_writer=frame_writer)
        try:
            conn.connect()
            channel = conn.channel(1)
            channel.confirm_select()
        except BaseException:
            try:
                conn.collect()
            except Exception:
                pass
            raise
        link = _Link(conn, channel, writes[-1])
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        link.greenlets.append(gevent.spawn(self._read, link))
        if s.heartbeat or s.timeout:
            link.greenlets.append(gevent.spawn(self._watch, link))
        self._link = link
        self.state = "connected"
        return link

    def _read(self, link: _Link) -> None:
        """Dispatch what the broker sends: acks, nacks, returns, closes."""
        try:
            while link.broken is None:
                link.conn.drain_events()
        except Exception as exc:
            self._broken(link, exc)

    def _watch(self, link: _Link) -> None:
        """Heartbeats out, a silent broker declared dead after two
        intervals, and the `timeout` bound on an unconfirmed publish."""
        heartbeat = link.conn.heartbeat
        timeout = self.settings.timeout / 1000.0
        period = 1.0
        if heartbeat:
            period = min(period, heartbeat / 4.0)
        if timeout:
            period = max(0.05, min(period, timeout / 4.0))
        try:
            while link.broken is None:
                gevent.sleep(period)
                if heartbeat:
                    with link.write_lock:
                        link.conn.heartbeat_tick()
                since = self.ledger.oldest_since() if timeout else None
                if since is not None and time.monotonic() - since > timeout:
                    raise OSError(f"no confirm from the broker within "
                                  f"{self.settings.timeout} ms")
        except Exception as exc:
            if link.broken is None and isinstance(exc, amqp.exceptions.ConnectionForced) \
                    and "heartbeat" in str(exc).lower():
                exc = OSError(f"broker silent for two heartbeat intervals ({2 * heartbeat} s)")
            self._broken(link, exc)

    def _broken(self, link: _Link, exc: BaseException) -> None:
        """The link died (seen by the reader, the watchdog or the sender):
        count and log it once, hand its unconfirmed messages back for
        publishing first, and let the sender reconnect after a backoff."""
        if link.broken is not None:
            return
        link.broken = describe(exc)
        link.abort()
        if self._link is not link:
            return
        self._link = None
        self.inflight = self.ledger.take_unconfirmed() + self.inflight
        self.send_errors += 1
        self.counters.errors.value += 1
        self._note(link.broken)
        self.state = "backoff"
        self._relink_delay = min(BACKOFF_MAX, (self._relink_delay * 2) or BACKOFF_FIRST)
        self._relink_at = time.monotonic() + self._relink_delay
        self._wake()

    def _wake(self) -> None:
        self._progress.set()
        self._idle = False
        self._wakeup.set()

    def close(self) -> None:
        link, self._link = self._link, None
        # whatever the broker did not confirm is published again first
        self.inflight = self.ledger.take_unconfirmed() + self.inflight
        if link is not None:
            link.broken = link.broken or "closed"
            link.close()
        if self.state == "connected":
            self.state = "idle"

    # -- broker replies (reader greenlet) ---------------------------------
    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._relink_delay = 0.0     # the broker takes our messages again
        settled = self.ledger.acked(tag, multiple)
        if settled.delivered:
            self._delivered(settled.delivered)
        if settled.returned:
            self.returned += settled.returned
            self.dropped += settled.returned
            self.counters.dropped.value += settled.returned
        self._progress.set()

    def _on_nack(self, tag: int, multiple: bool) -> None:
        settled = self.ledger.nacked(tag, multiple)
        self.inflight = self.inflight + settled.resend
        self._note(f"broker nacked {len(settled.resend)} notification(s): publishing them again")
        self._wake()

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: amqp.Message) -> None:
        self.ledger.returned()
        self._note(f"unroutable, returned by the broker: {describe(exc)} "
                   f"(exchange {self.target.exchange!r}, routing key {self.target.routing_key!r})")

    def _note(self, message: str) -> None:
        """A broker complaint: logged once while it repeats, shown in evi_status."""
        if message != self.last_error:
            log.warning("EVI %s: %s", self.label, message)
        self.last_error = message

    # -- sender -----------------------------------------------------------
    def deliver(self) -> None:
        link = self._link
        if link is None:
            pause = self._relink_at - time.monotonic()
            if pause > 0:       # a link just died: do not hammer the broker
                gevent.sleep(pause)
            try:
                link = self._open()
            except (OSError, amqp.exceptions.AMQPError, ssl.SSLError) as exc:
                raise OSError(describe(exc)) from None
        published = self._publish_some(link)
        if published:
            gevent.sleep(0)   # let the reader take the acks, the raisers run
            return
        if link.broken is None and (self.queue or self.inflight):
            # the confirm window is full: wait for acks (or a broken link)
            self._progress.clear()
            self._waiting = True
            try:
                self._progress.wait(1.0)
            finally:
                self._waiting = False

    def _publish_some(self, link: _Link) -> int:
        """Publish what the confirm window allows, as one write.

        Each message is what `channel.basic_publish(msg, exchange, routing_key,
        mandatory=True)` sends — py-amqp's frame writer builds the frames —
        with the method arguments serialised once per destination."""
        ledger = self.ledger
        write_frame = link.conn.frame_writer
        publish, arguments, properties = _PUBLISH, self._publish_arguments, self._properties
        published = 0
        with link.write_lock:
            link.writes.hold()
            try:
                while len(ledger) < CONFIRM_WINDOW and published < self.batch:
                    if self.inflight:
                        payload = self.inflight.pop(0)
                        self._retrying(1)
                    elif self.queue:
                        payload = self.queue.popleft()
                    else:
                        break
                    ledger.published(payload, time.monotonic())
                    write_frame(1, 1, publish, arguments, amqp.Message(payload, **properties))
                    published += 1
                link.writes.flush()
            except (OSError, amqp.exceptions.AMQPError) as exc:
                link.writes.parts = None
                self._broken(link, exc)   # counted once, even if the reader saw it first
        return published

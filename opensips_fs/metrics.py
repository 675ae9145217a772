"""The Prometheus `/metrics` page, served with prometheus-client.

Nothing on a hot path touches prometheus-client: the rooms keep counting as
they do (`Stats` counters, the sockets' and destinations' own figures, the
MI call counts) and the collectors here read those figures at scrape time
through public methods. So a scrape costs work proportional to the number
of sockets and destinations, and an event relayed costs nothing more.

Families (the README lists each one):

* every OpenSIPS statistic as ``opensips_fs_<group>_<name>``: counters
  (``_total``) report `Counter.total`, which `reset_statistics` never
  lowers; gauges report their current value;
* per ESL socket (label ``socket``), per EVI destination (labels
  ``transport``, ``destination`` — the `evi_status` name, which never holds
  a password), MI requests by command, transport and outcome with a latency
  histogram per command, the time of the last database load;
* ``opensips_fs_build_info{version}`` and the process and platform
  collectors of prometheus-client (CPU, RSS, file descriptors, Python).

A rendered page is served again to scrapes that come within `max_age`
seconds (1 s by default): however many scrapers there are, or however fast
one hammers the page, rendering takes at most one render a second from the
event loop that relays the events.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    InfoMetricFamily, Metric)
from prometheus_client.exposition import choose_encoder

from . import __version__
from .mi.callstats import MiCallStats
from .stats import Counter, Stats

if TYPE_CHECKING:
    from .esl.manager import EslManager
    from .evi.registry import EviRegistry
    from .scripting import Scripting

__all__ = ["MetricsPage", "metric_name"]

PREFIX = "opensips_fs"
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_]")

# (key in EslSocket.counters(), family suffix, help); counters, then gauges
ESL_SOCKET_COUNTERS = (
    ("events_received", "events_received", "events read from this FreeSWITCH"),
    ("events_relayed", "events_relayed", "events of this socket handed to subscribers"),
    ("events_dropped", "events_dropped", "events of this socket dropped (malformed, not subscribed)"),
    ("events_queue_dropped", "events_queue_dropped", "events of this socket dropped on a full consumer queue"),
    ("reconnects", "reconnects", "connections to this FreeSWITCH re-established after a loss"),
    ("connect_failures", "connect_failures", "connection attempts to this FreeSWITCH that failed"),
    ("login_failures", "login_failures", "logins this FreeSWITCH refused"),
)
ESL_SOCKET_GAUGES = (
    ("connected", "connected", "1 when the socket is connected and logged in, else 0"),
    ("subscribed", "subscribed_events", "events FreeSWITCH confirmed the subscription of"),
    ("pending", "pending_events", "events wanted but not (yet) subscribed on FreeSWITCH"),
)
# (key in a destination's status(), family suffix, help)
EVI_DESTINATION_COUNTERS = (
    ("sent", "sent", "notifications delivered to this destination"),
    ("dropped", "dropped", "notifications dropped for this destination"),
    ("retried", "retried", "notifications sent to this destination again after a failure"),
    ("send_errors", "send_errors", "failed send attempts to this destination"),
    ("returned", "returned", "notifications the RabbitMQ broker returned as unroutable"),
)
EVI_DESTINATION_GAUGES = (
    ("queued", "queued", "notifications waiting for this destination"),
    ("queued_bytes", "queued_bytes", "bytes waiting for this destination"),
    ("unconfirmed", "unconfirmed", "notifications the RabbitMQ broker has not confirmed yet"),
)


class Collector(Protocol):
    def collect(self) -> Iterator[Metric]: ...


def metric_name(*parts: str) -> str:
    """``opensips_fs_<parts…>`` with anything Prometheus refuses made ``_``."""
    return _NOT_IN_NAME.sub("_", "_".join((PREFIX,) + parts))


class StatsCollector:
    """Every OpenSIPS statistic (`get_statistics`) as a family."""

    def __init__(self, stats: Stats):
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        for stat in self._stats:
            name = metric_name(stat.group, stat.name)
            text = stat.help or f"statistic {stat.group}:{stat.name}"
            if isinstance(stat, Counter):
                yield CounterMetricFamily(name, text, value=stat.total)
                continue
            try:
                value = stat.value
            except Exception:  # a gauge whose source is gone: skip it, keep the page
                continue
            yield GaugeMetricFamily(name, text, value=value)


def _labelled_families(rows: Iterable[dict], labels: Callable[[dict], list[str]], label_names: list[str],
                       prefix: tuple[str, ...], counters: tuple, gauges: tuple) -> Iterator[Metric]:
    """One family per figure, one sample per row that has the figure."""
    rows = list(rows)
    label_values = [labels(row) for row in rows]
    for kind, specs in ((CounterMetricFamily, counters), (GaugeMetricFamily, gauges)):
        for key, suffix, text in specs:
            family = kind(metric_name(*prefix, suffix), text, labels=label_names)
            for row, values in zip(rows, label_values):
                if key in row:
                    family.add_metric(values, float(row[key]))
            if family.samples:
                yield family


class EslSocketCollector:
    """Figures of each ESL socket, labelled ``socket="host:port"``."""

    def __init__(self, manager: EslManager):
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        rows = [sock.counters() for sock in self._manager.sockets()]
        yield from _labelled_families(rows, lambda row: [row["socket"]], ["socket"], ("esl_socket",),
                                      ESL_SOCKET_COUNTERS, ESL_SOCKET_GAUGES)


class EviDestinationCollector:
    """Figures of each EVI destination, labelled ``transport`` and
    ``destination``."""

    def __init__(self, evi: EviRegistry):
        self._evi = evi

    def collect(self) -> Iterator[Metric]:
        yield from _labelled_families(self._evi.status(), lambda row: [row["transport"], row["socket"]],
                                      ["transport", "destination"], ("evi_destination",),
                                      EVI_DESTINATION_COUNTERS, EVI_DESTINATION_GAUGES)


class MiCallCollector:
    """MI requests by command, transport and outcome, and their latency."""

    def __init__(self, calls: MiCallStats):
        self._calls = calls

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(metric_name("mi_command_requests"),
                                       "MI requests answered, by command, transport and outcome",
                                       labels=["command", "transport", "outcome"])
        for command, transport, outcome, count in self._calls.calls():
            requests.add_metric([command, transport, outcome], count)
        yield requests
        duration = HistogramMetricFamily(metric_name("mi_command_duration_seconds"),
                                         "time to answer an MI request, by command", labels=["command"])
        for command, latency in self._calls.latencies():
            duration.add_metric([command], latency.cumulative(), latency.sum)
        yield duration


class DatabaseCollector:
    """When the `freeswitch` table was last loaded (the load and failure
    counts are statistics of `freeswitch_scripting`)."""

    def __init__(self, scripting: Scripting):
        self._scripting = scripting

    def collect(self) -> Iterator[Metric]:
        status = self._scripting.db_status()
        if status is None or status["last_load"] is None:
            return
        yield GaugeMetricFamily(metric_name("freeswitch_scripting", "db_last_load_timestamp_seconds"),
                                "Unix time of the last successful load of the freeswitch table",
                                value=status["last_load"])


class BuildInfoCollector:
    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily(metric_name("build"), "the opensips-fs version running",
                               value={"version": __version__})


class MetricsPage:
    """The `/metrics` route: a registry of the collectors above, rendered
    in the format the scraper asks for (OpenMetrics or Prometheus text)."""

    def __init__(self, stats: Stats, *, manager: EslManager | None = None, evi: EviRegistry | None = None,
                 scripting: Scripting | None = None,
                 mi_calls: MiCallStats | None = None, max_age: float = 1.0):
        self.max_age = max_age
        self._rendered: dict[str, tuple[float, bytes]] = {}    # content type -> (when, page)
        self.registry = CollectorRegistry(auto_describe=False)
        collectors: list[Collector] = [BuildInfoCollector(), StatsCollector(stats)]
        if manager is not None:
            collectors.append(EslSocketCollector(manager))
        if evi is not None:
            collectors.append(EviDestinationCollector(evi))
        if mi_calls is not None:
            collectors.append(MiCallCollector(mi_calls))
        if scripting is not None:
            collectors.append(DatabaseCollector(scripting))
        for collector in collectors:
            self.registry.register(collector)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def render(self, accept: str | None) -> tuple[str, bytes]:
        """(content type, body) for a request with this `Accept` header."""
        encoder, content_type = choose_encoder(accept or "")
        now = time.monotonic()
        rendered = self._rendered.get(content_type)
        if rendered is not None and now - rendered[0] < self.max_age:
            return content_type, rendered[1]
        body = encoder(self.registry)
        self._rendered[content_type] = (now, body)
        return content_type, body

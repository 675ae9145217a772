"""Scrape `/metrics` as Prometheus does, and read it with prometheus-client's
own parsers (Prometheus text, or OpenMetrics when asked for)."""

from __future__ import annotations

import base64
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

__all__ = ["Scrape", "scrape"]

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


class Scrape:
    """One parsed page: its families, and its samples by name and labels."""

    def __init__(self, content_type: str, text: str):
        self.content_type = content_type
        self.text = text
        parse = parse_openmetrics if content_type.startswith("application/openmetrics-text") else parse_prometheus
        self.families = {family.name: family for family in parse(text)}
        self.samples = [sample for family in self.families.values() for sample in family.samples]

    def value(self, name: str, **labels: str) -> float | None:
        """The sample `name` whose labels include `labels`; None when absent,
        an AssertionError when several match."""
        found = [s.value for s in self.samples
                 if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) <= 1, f"{name} {labels}: {len(found)} samples"
        return found[0] if found else None

    def number(self, name: str, **labels: str) -> float:
        """`value` of a sample that must be there (AssertionError when absent)."""
        value = self.value(name, **labels)
        assert value is not None, f"{name} {labels}: no sample"
        return value

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


def scrape(http_port: int, accept: str | None = None, auth: str | None = None) -> Scrape:
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/metrics")
    if accept:
        request.add_header("Accept", accept)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as reply:
        return Scrape(reply.headers["Content-Type"], reply.read().decode())

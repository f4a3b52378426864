"""The node's Prometheus registry: every role registers its metrics here, one `/metrics` serves them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets from 5 ms to 2 min: covers time to first token on a CPU and full completions.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)


class Telemetry:
    """One registry per daemon, so tests and several daemons in one process never share metrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry()
        self.node_id = node_id
        Gauge("cynode_node_info", "Static facts about this node", ["node_id"], registry=self.registry).labels(node_id).set(1)

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, labels: tuple[str, ...] = (), buckets=LATENCY_BUCKETS) -> Histogram:
        return Histogram(name, doc, labels, registry=self.registry, buckets=buckets)

    def render(self) -> bytes:
        return generate_latest(self.registry)

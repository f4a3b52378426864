"""The node's Prometheus registry: every role registers its metrics here, one `/metrics` serves them.

Counters and histograms are `cynode.fast_metrics`' (the request path touches them for every
token); gauges are prometheus_client's, with `set_function` for values read at scrape time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .fast_metrics import FastCounter, FastHistogram

# Request-level latencies (time to first token, whole completions, queue wait), 5 ms to 10 min: a
# cache hit answers in milliseconds, a long completion on a CPU takes minutes, and a queued request
# waits for whole completions ahead of it. Roughly ×2 steps, so P50/P95/P99 interpolate within ~2×.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
# Token-level latencies (between two tokens of one stream), 1 ms to 5 s: a GPU decodes a token in a
# few ms, a busy CPU batch in a few hundred.
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5)


class Telemetry:
    """One registry per daemon, so tests and several daemons in one process never share metrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry()
        self.node_id = node_id
        Gauge("cynode_node_info", "Static facts about this node", ["node_id"], registry=self.registry).labels(node_id).set(1)

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> FastCounter:
        counter = FastCounter(name, doc, labels)
        self.registry.register(counter)
        return counter

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, labels: tuple[str, ...] = (), buckets=LATENCY_BUCKETS) -> FastHistogram:
        histogram = FastHistogram(name, doc, labels, buckets)
        self.registry.register(histogram)
        return histogram

    def render(self) -> bytes:
        return generate_latest(self.registry)

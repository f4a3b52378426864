"""The request path's counters and histograms read on /metrics exactly as prometheus_client's would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from cynode.telemetry import Telemetry


def test_a_counter_and_a_histogram_expose_what_prometheus_clients_would():
    telemetry = Telemetry("n1")
    requests = telemetry.counter("demo_requests", "Requests by outcome", ("status",))
    latency = telemetry.histogram("demo_latency_seconds", "Latency", ("route",), buckets=(0.1, 1.0, 10.0))
    reference = CollectorRegistry()
    ref_requests = Counter("demo_requests", "Requests by outcome", ("status",), registry=reference)
    ref_latency = Histogram("demo_latency_seconds", "Latency", ("route",), buckets=(0.1, 1.0, 10.0), registry=reference)
    for status, value in (("ok", 0.05), ("ok", 0.1), ("failed", 3.0), ("ok", 20.0)):
        for counter, histogram in ((requests, latency), (ref_requests, ref_latency)):
            counter.labels(status).inc()
            histogram.labels("/v1/chat/completions").observe(value)
    ours = telemetry.registry.get_sample_value
    theirs = reference.get_sample_value
    for name, labels in (("demo_requests_total", {"status": "ok"}), ("demo_requests_total", {"status": "failed"}),
                         ("demo_latency_seconds_count", {"route": "/v1/chat/completions"}),
                         ("demo_latency_seconds_sum", {"route": "/v1/chat/completions"})):
        assert ours(name, labels) == theirs(name, labels), name
    for le in ("0.1", "1.0", "10.0", "+Inf"):
        labels = {"route": "/v1/chat/completions", "le": le}
        assert ours("demo_latency_seconds_bucket", labels) == theirs("demo_latency_seconds_bucket", labels), le
    text = generate_latest(telemetry.registry).decode()
    assert '# TYPE demo_latency_seconds histogram' in text and 'demo_requests_total{status="ok"} 3.0' in text


def test_a_counter_never_goes_down():
    import pytest

    counter = Telemetry("n1").counter("demo_tokens", "Tokens")
    counter.inc(5)
    with pytest.raises(ValueError):
        counter.inc(-1)


def test_a_registry_restricted_by_name_still_finds_them():
    telemetry = Telemetry("n1")
    telemetry.counter("demo_tokens", "Tokens", ("model",)).labels("m").inc(3)
    restricted = telemetry.registry.restricted_registry(["demo_tokens_total"])
    samples = [s for family in restricted.collect() for s in family.samples]
    assert [(s.name, s.value) for s in samples] == [("demo_tokens_total", 3.0)]

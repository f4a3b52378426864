"""The figures behind the status page and Prometheus discovery: rates, quantiles, live members."""

from __future__ import annotations

from dataclasses import dataclass, field

from cynode.cluster_overview import overview
from cynode.leader_record import LeaderInfo
from cynode.node_stats import ClusterHistory, Sampler, cluster_totals, read_registry
from cynode.prometheus_sd import prometheus_targets
from cynode.telemetry import Telemetry


@dataclass
class FakeMember:
    id: str
    state: str
    meta: dict = field(default_factory=dict)
    address: str = ""


def worker_metrics():
    telemetry = Telemetry("n1")
    tokens = telemetry.counter("worker_tokens_generated", "t", ("model",))
    ttft = telemetry.histogram("worker_time_to_first_token_seconds", "t", ("model",))
    return telemetry, tokens, ttft


def test_tokens_per_second_and_ttft_come_from_the_last_minute_only():
    telemetry, tokens, ttft = worker_metrics()
    sampler = Sampler()
    tokens.labels("a").inc(10_000)  # long ago: outside the window
    sampler.add(read_registry(telemetry.registry, 0.0))
    sampler.add(read_registry(telemetry.registry, 100.0))
    tokens.labels("a").inc(300)
    tokens.labels("b").inc(300)  # every model counts
    for seconds in (0.2, 0.4, 0.6, 3.0):
        ttft.labels("a").observe(seconds)
    sampler.add(read_registry(telemetry.registry, 160.0))
    stats = sampler.summary(window=60)
    assert stats["tps"] == 10.0  # 600 tokens over the 60 s between the readings at 100 and 160
    assert stats["ttft"] == 1.05 and stats["n"] == 4
    assert 2.5 < stats["p95"] <= 5  # in the (2.5, 5] bucket, as Prometheus' histogram_quantile says
    assert "q" not in stats  # not a coordinator


def test_a_coordinator_reports_its_queue_and_leadership():
    telemetry = Telemetry("n1")
    telemetry.gauge("coordinator_queue_pending", "q").set(7)
    telemetry.gauge("coordinator_is_leader", "l").set(1)
    telemetry.gauge("coordinator_leader_epoch", "e").set(12)
    sampler = Sampler()
    sampler.add(read_registry(telemetry.registry, 0.0))
    assert sampler.summary() == {"tps": 0.0, "ttft": None, "p95": None, "n": 0, "active": 0, "q": 7}


def test_reading_the_figures_does_not_run_unrelated_gauges():
    telemetry, _, _ = worker_metrics()
    reads = []
    telemetry.gauge("worker_gpu_utilization", "u").set_function(lambda: reads.append(1) or 50.0)
    read_registry(telemetry.registry, 0.0)
    assert reads == []  # its "since the last read" belongs to the Prometheus scrape


def test_history_keeps_a_quarter_of_an_hour():
    history = ClusterHistory()
    for minute in range(30):
        history.record(minute * 60.0, [{"tps": minute, "ttft": 0.5, "n": 2}])
    assert history.points[0].at == 14 * 60.0 and len(history.points) == 16  # the 900 s before the last point


def test_cluster_ttft_is_weighted_by_each_nodes_requests():
    assert cluster_totals([{"tps": 10, "ttft": 1.0, "n": 3}, {"tps": 5.5, "ttft": 3.0, "n": 1}, {}]) == (15.5, 1.5)


def test_discovery_lists_live_members_metrics_addresses_and_drops_dead_ones():
    members = [
        FakeMember("n1", "alive", {"roles": ["worker", "gateway"], "version": "0.1.0", "addr": {"metrics": "10.0.0.1:9090"}}),
        FakeMember("n2", "suspect", {"roles": ["coordinator"], "addr": {"metrics": "10.0.0.2:9090"}}),
        FakeMember("n3", "dead", {"roles": ["worker"], "addr": {"metrics": "10.0.0.3:9090"}}),
        FakeMember("n4", "left", {"roles": ["worker"], "addr": {"metrics": "10.0.0.4:9090"}}),
        FakeMember("n5", "alive", {"roles": ["worker"]}),  # an old node that publishes no metrics address
    ]
    groups = prometheus_targets(members, "prod")
    assert [g["targets"] for g in groups] == [["10.0.0.1:9090"], ["10.0.0.2:9090"]]
    assert groups[0]["labels"] == {"cynode_node": "n1", "cynode_cluster": "prod", "cynode_roles": "gateway,worker",
                                   "__meta_cynode_state": "alive", "__meta_cynode_version": "0.1.0"}


def test_the_overview_shows_members_models_leader_and_queue():
    members = [
        FakeMember("n1", "alive", {"roles": ["coordinator", "worker"], "models": ["m", "x"], "loaded": ["m"],
                                   "addr": {"coordinator": "10.0.0.1:50050"}, "leader_epoch": 7,
                                   "stats": {"tps": 12.0, "ttft": 0.5, "p95": 0.9, "n": 4, "q": 3}}),
        FakeMember("n2", "alive", {"roles": ["worker"], "models": ["m"], "loaded": ["m"],
                                   "stats": {"tps": 8.0, "ttft": 1.0, "p95": 2.0, "n": 1}}),
        FakeMember("n3", "dead", {"roles": ["worker"], "models": ["m"], "loaded": ["m"], "stats": {"tps": 99.0}}),
    ]
    body = overview(node_id="n2", cluster="prod", members=members, leader=None, history=ClusterHistory(), now=1.0)
    assert body["leader"] == {"id": "n1", "epoch": 7, "address": "10.0.0.1:50050", "source": "gossip"}
    assert body["queue"] == {"pending": 3, "reported_by": "n1"}
    assert body["models"] == [{"id": "m", "loaded_on": ["n1", "n2"], "served_by": ["n1", "n2"]},
                              {"id": "x", "loaded_on": [], "served_by": ["n1"]}]
    assert body["throughput"]["tokens_per_second"] == 20.0  # the dead node's figures do not count
    assert body["throughput"]["ttft_mean_s"] == 0.6 and body["throughput"]["ttft_p95_s"] == 2.0
    assert [m["state"] for m in body["members"]] == ["alive", "alive", "dead"] and body["members"][0]["leader"]
    assert body["training_jobs"] == []

    redis_says = LeaderInfo(id="n1", address="10.0.0.1:50050", epoch=8)
    body = overview(node_id="n2", cluster="prod", members=members, leader=redis_says, history=ClusterHistory(), now=1.0)
    assert body["leader"]["epoch"] == 8 and body["leader"]["source"] == "redis"  # Redis decides

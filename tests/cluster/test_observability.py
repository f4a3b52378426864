"""What an operator watches, on three real daemons (127.0.0.2-4, every role, the sim engine):
every node's /metrics, Prometheus discovery, the Grafana dashboard's queries, the status page."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import httpx
import pytest

from browser import Browser
from cluster_harness import Cluster, chat, wait_for
from daemon_harness import CynodeProcess

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("CYNODE_TEST_ARTIFACTS", REPO / ".test-artifacts"))
DASHBOARD = REPO / "packaging" / "grafana" / "cynode.json"

# ARCHITECTURE section 9: the seed's names, kept.
SEED_METRICS = ("coordinator_inference_requests_total", "coordinator_cache_hit_rate", "coordinator_queue_pending",
                "coordinator_workers_healthy", "worker_inference_latency_bucket", "worker_gpu_memory_used",
                "worker_gpu_utilization")
# ... and the rest of section 9: TTFT, inter-token latency, throughput, queue wait, leader epoch, gossip.
MORE_METRICS = ("worker_time_to_first_token_seconds_bucket", "worker_inter_token_latency_seconds_bucket",
                "worker_tokens_generated_total", "worker_tokens_per_second_bucket", "coordinator_queue_wait_seconds_bucket",
                "coordinator_leader_epoch", "gossip_members", "worker_requests_total", "worker_prompt_tokens_total",
                "gateway_time_to_first_token_seconds_bucket")
NAMES = ("n1", "n2", "n3")


def scrape(node: CynodeProcess) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{node.metrics_url}/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
        samples[(match.group(1), labels)] = float(match.group(4))
    return samples


def total(samples, name: str, **labels) -> float:
    wanted = set(labels.items())
    return sum(v for (n, l), v in samples.items() if n == name and wanted <= set(l))


def names(samples) -> set[str]:
    return {n for n, _ in samples}


def admin_get(node: CynodeProcess, path: str, base: str | None = None) -> httpx.Response:
    return httpx.get((base or node.metrics_url) + path, headers={"Authorization": f"Bearer {node.api_key()}"}, timeout=10)


@pytest.fixture(scope="module")
def trio(tmp_path_factory, redis_server, models_dir):
    cluster = Cluster(tmp_path_factory.mktemp("observability"), redis_server.url, models_dir)
    nodes = []
    seed_address = None
    for index, name in enumerate(NAMES):
        host = f"127.0.0.{index + 2}"
        node = CynodeProcess(cluster.workdir / name, host=host, redis_url=cluster.redis_url, models_dir=models_dir, extra={
            "node": {"id": name},
            "cluster": {"name": cluster.name, "key_file": str(cluster.key_file), "seeds": [seed_address] if seed_address else []},
            "coordinator": {"leader_ttl": "3s", "health_check_interval": "500ms", "health_check_timeout": "500ms"},
            "worker": {"backend": "sim", "sim": {"tokens_per_second": 200.0, "answer_tokens": 24, "ttft": "20ms"}},
        })
        seed_address = seed_address or f"{host}:{node.ports['gossip']}"
        cluster.nodes[name] = node
        nodes.append(node)
    cluster.start(*nodes)
    for node in nodes:
        wait_for(lambda n=node: sum(m["state"] == "alive" for m in admin_get(n, "/v1/cluster/members").json()["members"]) == 3,
                 60, f"{node.config_id} to see all three alive")
    wait_for(cluster.leader, 30, "a leader")
    yield cluster, nodes
    cluster.stop()


def test_every_node_exports_the_seed_metrics_and_they_move_with_traffic(trio):
    cluster, nodes = trio
    wait_for(lambda: all(total(scrape(n), "coordinator_workers_healthy") == 3 for n in nodes), 30,
             "every coordinator to see three healthy workers")
    before = {n.config_id: scrape(n) for n in nodes}
    for round_ in range(4):
        for node in nodes:  # every gateway takes traffic; the leader spreads it over the three workers
            reply = chat(node, "sim", content=f"round {round_} via {node.config_id}", max_tokens=8, cache=False)
            assert reply.status_code == 200 and reply.headers.get("X-Cache") == "miss", reply.text
    leader = cluster.leader()["id"]
    after = {n.config_id: wait_for(lambda n=n: _moved(before[n.config_id], scrape(n)), 30,
                                   f"{n.config_id}'s worker metrics to move") for n in nodes}
    for name, samples in after.items():
        missing = [m for m in SEED_METRICS + MORE_METRICS if m not in names(samples)]
        assert not missing, f"{name} lacks {missing}"
        was = before[name]
        assert total(samples, "worker_inference_latency_count") > total(was, "worker_inference_latency_count"), name
        assert total(samples, "worker_requests_total", model="sim", outcome="ok") > total(was, "worker_requests_total", model="sim", outcome="ok")
        assert total(samples, "worker_tokens_generated_total") > total(was, "worker_tokens_generated_total")
        assert total(samples, "gateway_http_requests_total", status="200") >= total(was, "gateway_http_requests_total", status="200") + 4
        assert total(samples, "worker_gpu_memory_used") > 0
        assert total(samples, "gossip_members", state="alive") == 3
        buckets = {dict(l)["le"] for n, l in samples if n == "worker_time_to_first_token_seconds_bucket"}
        assert {"0.005", "600.0", "+Inf"} <= buckets  # milliseconds to ten minutes
    moved = total(after[leader], "coordinator_inference_requests_total", status="assigned") \
        - total(before[leader], "coordinator_inference_requests_total", status="assigned")
    assert moved >= 12, f"the leader {leader} assigned {moved} of the 12 requests"
    assert total(after[leader], "coordinator_leader_epoch") >= 1 and total(after[leader], "coordinator_is_leader") == 1


def _moved(before, now):
    return now if total(now, "worker_inference_latency_count") > total(before, "worker_inference_latency_count") else None


def test_the_grafana_dashboard_queries_only_metrics_that_exist(trio):
    _, nodes = trio
    exported = set().union(*(names(scrape(n)) for n in nodes))
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"]]
    assert len(queries) >= 20
    for query in queries:
        used = _metric_names(query)
        assert used, f"no metric in {query!r}"
        unknown = used - exported
        assert not unknown, f"{query!r} names {sorted(unknown)}, which no node exports"


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def _metric_names(query: str) -> set[str]:
    text = re.sub(r'"[^"]*"', "", query)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"label_values\(([^,)]+),[^)]*\)", r"\1", text)  # Grafana's variable query
    found = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word, rest = match.group(0), text[match.end():].lstrip()
        if word in _PROMQL_WORDS or rest.startswith("("):
            continue  # a keyword or a function
        found.add(word)
    return found


async def test_the_status_page_shows_members_leader_and_models_in_a_browser(trio):
    cluster, nodes = trio
    node = nodes[1]  # any node: not necessarily the leader
    leader = cluster.leader()["id"]
    for port_url in (node.metrics_url, node.base_url):  # served on the metrics port and on the gateway port
        reply = httpx.get(port_url + "/", timeout=10)
        assert reply.status_code == 200 and "cynode status" in reply.text
        assert "default-src 'none'" in reply.headers["Content-Security-Policy"]
    assert httpx.get(node.metrics_url + "/v1/cluster/overview", timeout=10).status_code == 401
    async with Browser() as browser:
        await browser.goto(node.metrics_url + "/")
        await browser.wait_for("!document.getElementById('login').hidden", 15, "the login form")
        await browser.evaluate(f"document.getElementById('api-key').value = {json.dumps(node.api_key())};"
                               "document.getElementById('login-form').requestSubmit(); true")
        await browser.wait_for("document.querySelectorAll('#members tbody tr').length === 3", 30, "three members")
        await browser.wait_for(f"document.getElementById('leader-id').textContent === {json.dumps(leader)}", 15, "the leader")
        shown = await browser.evaluate(
            "({members: [...document.querySelectorAll('#members tbody tr')].map(r => [...r.cells].map(c => c.textContent)),"
            " models: [...document.querySelectorAll('#models tbody tr')].map(r => [...r.cells].map(c => c.textContent)),"
            " leader: document.getElementById('leader-detail').textContent,"
            " training: document.getElementById('training-empty').textContent,"
            " stored: sessionStorage.getItem('cynode-admin-key') !== null, cookies: document.cookie})")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = await browser.screenshot(ARTIFACTS / "status-page.png")
        print(f"status page screenshot: {shot}")
    assert [row[0].replace("leader", "") for row in shown["members"]] == list(NAMES)
    assert all(row[1] == "alive" and "gateway" in row[2] and "worker" in row[2] for row in shown["members"])
    assert shown["models"] == [["sim", "n1, n2, n3", "n1, n2, n3"]]
    assert re.match(r"epoch \d+ · 127\.0\.0\.\d:\d+ · from redis", shown["leader"]), shown["leader"]
    assert shown["training"] == "No training jobs."
    assert shown["stored"] and shown["cookies"] == ""  # the key lives in sessionStorage, never in a cookie
    assert shot.stat().st_size > 10_000


async def test_a_wrong_key_is_refused_on_the_login_form(trio):
    _, nodes = trio
    async with Browser() as browser:
        await browser.goto(nodes[0].base_url + "/")
        await browser.evaluate("document.getElementById('api-key').value = 'sk-cynode-wrong';"
                               "document.getElementById('login-form').requestSubmit(); true")
        message = await browser.wait_for("document.getElementById('login-error').textContent", 15, "the refusal")
    assert "Incorrect API key" in message


def test_prometheus_discovery_lists_every_live_member_and_drops_a_dead_one(trio):
    cluster, nodes = trio
    expected = {n.config_id: f"{n.host}:{n.ports['metrics']}" for n in nodes}
    for node in nodes:
        for base in (node.metrics_url, node.base_url):
            groups = admin_get(node, "/v1/cluster/prometheus-targets", base).json()
            assert {g["labels"]["cynode_node"]: g["targets"][0] for g in groups} == expected
            assert all(g["labels"]["cynode_cluster"] == cluster.name for g in groups)
    assert httpx.get(nodes[0].metrics_url + "/v1/cluster/prometheus-targets", timeout=10).status_code == 401
    for target in expected.values():  # every address listed is a /metrics Prometheus can scrape
        assert "gossip_members" in httpx.get(f"http://{target}/metrics", timeout=10).text

    victim = nodes[2]
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    for node in nodes[:2]:
        wait_for(lambda n=node: [g["labels"]["cynode_node"] for g in admin_get(n, "/v1/cluster/prometheus-targets").json()]
                 == ["n1", "n2"], 60, f"{node.config_id} to drop the dead n3")

"""Coordinator high availability with real daemons: failover, fencing, dead workers, Redis restarts.

Workers run the `sim` backend (paced tokens, no model) so the streams are long enough to kill
things in the middle of them; everything else is the real daemon, real gRPC and a real Redis.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal

import httpx

from cluster_harness import Cluster, chat, wait_for
from redis_harness import RedisServer




def model_of(gateway) -> str:
    """The model the cluster serves, once the leader has seen a healthy worker."""
    def listed():
        reply = httpx.get(f"{gateway.base_url}/v1/models", headers={"Authorization": f"Bearer {gateway.api_key()}"}, timeout=30)
        return reply.status_code == 200 and reply.json()["data"] and reply.json()["data"][0]["id"]
    return wait_for(listed, 20, "a model to be served")


def fire(gateway, model: str, count: int, max_tokens: int):
    pool = concurrent.futures.ThreadPoolExecutor(count)
    futures = [pool.submit(chat, gateway, model, content=f"request {i}", max_tokens=max_tokens, timeout=180)
               for i in range(count)]
    return pool, futures


def assert_every_task_done_exactly_once(cluster: Cluster, expected: int) -> None:
    tasks = cluster.tasks()
    assert len(tasks) == expected
    assert {t["state"] for t in tasks} == {"done"}, [(t["id"], t["state"], t.get("error")) for t in tasks]
    assert {t["attempts"] for t in tasks} == {"1"}, "a task ran more than once"
    assert cluster.queue_depths() == {"pending": 0, "inflight": 0, "dead": 0}


def test_killing_the_leader_loses_no_task_and_runs_none_twice(cluster):
    workers = [cluster.sim_worker(f"w{i}", concurrency=2) for i in range(2)]
    coordinators = [cluster.coordinator(f"c{i}", workers) for i in range(3)]
    gateway = cluster.gateway("gw")
    cluster.start(*workers, *coordinators, gateway)
    before = wait_for(cluster.leader, 20, "a leader")
    model = model_of(gateway)

    pool, futures = fire(gateway, model, count=12, max_tokens=60)
    # Some requests are streaming (4 slots), the rest wait in the queue.
    wait_for(lambda: (d := cluster.queue_depths())["inflight"] == 4 and d["pending"] == 8, 30,
             "4 streaming and 8 queued requests")
    leader_node = cluster.nodes[before["id"]]
    leader_node.proc.send_signal(signal.SIGKILL)
    after = wait_for(lambda: (l := cluster.leader()) and l["id"] != before["id"] and l, 30, "a new leader")
    assert int(after["epoch"]) > int(before["epoch"])

    replies = [f.result() for f in futures]
    pool.shutdown()
    assert [r.status_code for r in replies] == [200] * 12, [r.text for r in replies if r.status_code != 200]
    assert {r.json()["usage"]["completion_tokens"] for r in replies} == {60}
    assert_every_task_done_exactly_once(cluster, 12)


def test_a_paused_leader_is_fenced_out_and_steps_down_when_it_wakes(cluster):
    workers = [cluster.sim_worker("w0", concurrency=2)]
    coordinators = [cluster.coordinator(f"c{i}", workers) for i in range(2)]
    gateway = cluster.gateway("gw")
    cluster.start(*workers, *coordinators, gateway)
    before = wait_for(cluster.leader, 20, "a leader")
    old = cluster.nodes[before["id"]]
    model = model_of(gateway)

    old.proc.send_signal(signal.SIGSTOP)
    try:
        after = wait_for(lambda: (l := cluster.leader()) and l["id"] != before["id"] and l, 30, "a new leader")
        pool, futures = fire(gateway, model, count=4, max_tokens=30)
        wait_for(lambda: len(cluster.tasks()) == 4, 30, "the new leader to admit all four")
    finally:
        old.proc.send_signal(signal.SIGCONT)
    replies = [f.result() for f in futures]
    pool.shutdown()
    assert [r.status_code for r in replies] == [200] * 4
    wait_for(lambda: "no longer leader" in old.log() or "became leader" not in old.log().split("SIGCONT")[-1], 10,
             "the old leader to notice")
    metrics = httpx.get(f"{old.metrics_url}/metrics", timeout=10).text
    assert "coordinator_is_leader 0.0" in metrics
    assert cluster.leader()["id"] == after["id"]
    assert_every_task_done_exactly_once(cluster, 4)


def test_a_worker_killed_after_the_first_tokens_is_migrated_and_the_client_gets_the_unbroken_answer(cluster):
    workers = [cluster.sim_worker(f"w{i}", concurrency=1) for i in range(2)]
    coordinator = cluster.coordinator("c0", workers, gateway=True)
    cluster.start(*workers, coordinator)
    model = model_of(coordinator)
    expected_text, _, _ = chat(coordinator, model, content="migrate me", max_tokens=80, stream=True, cache=False)

    body = {"model": model, "messages": [{"role": "user", "content": "migrate me"}], "temperature": 0,
            "max_tokens": 80, "stream": True}
    headers = {"Authorization": f"Bearer {coordinator.api_key()}", "Cache-Control": "no-cache"}
    text, finish, busy = "", None, None
    with httpx.stream("POST", f"{coordinator.base_url}/v1/chat/completions", json=body, headers=headers,
                      timeout=120) as reply:
        assert reply.status_code == 200 and reply.headers["X-Cache"] == "miss"
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line[6:])["choices"][0]
            text += choice["delta"].get("content") or ""
            finish = choice["finish_reason"] or finish
            if busy is None and len(text) > 20:  # tokens are out: now the worker dies
                busy = next(t for t in cluster.tasks() if t["state"] == "leased")
                cluster.nodes[busy["worker"]].proc.send_signal(signal.SIGKILL)
    assert busy is not None and finish == "length"
    assert text == expected_text, "the migrated stream must continue exactly where the dead worker stopped"
    task = next(t for t in cluster.tasks() if t["id"] == busy["id"])
    assert task["state"] == "done" and task["attempts"] == "2" and task["worker"] != busy["worker"]
    metrics = httpx.get(f"{coordinator.metrics_url}/metrics", timeout=10).text
    assert 'gateway_completions_total{outcome="migrated"} 1.0' in metrics


def test_a_full_queue_answers_429_with_retry_after(cluster):
    worker = cluster.sim_worker("w0", concurrency=1)
    coordinator = cluster.coordinator("c0", [worker], gateway=True, coordinator={"task_queue": {"max_size": 2}})
    cluster.start(worker, coordinator)
    model = model_of(coordinator)
    pool, futures = fire(coordinator, model, count=6, max_tokens=40)
    replies = [f.result() for f in futures]
    pool.shutdown()
    refused = [r for r in replies if r.status_code == 429]
    assert refused and all(r.status_code in (200, 429) for r in replies)
    assert int(refused[0].headers["Retry-After"]) >= 1
    assert refused[0].json()["error"]["type"] == "rate_limit_error"


def test_redis_restarted_under_load_loses_no_task(tmp_path, models_dir):
    server = RedisServer(tmp_path / "redis").start()
    cluster = Cluster(tmp_path, server.url, models_dir)
    try:
        worker = cluster.sim_worker("w0", concurrency=2)
        coordinator = cluster.coordinator("c0", [worker], gateway=True)
        cluster.start(worker, coordinator)
        model = model_of(coordinator)
        pool, futures = fire(coordinator, model, count=8, max_tokens=40)
        wait_for(lambda: (d := cluster.queue_depths())["inflight"] == 2 and d["pending"] == 6, 30,
                 "2 streaming and 6 queued requests")
        mark = coordinator.log_mark()
        server.stop()  # SIGTERM: Redis writes its AOF and exits
        wait_for(lambda: "leader election: Redis error" in coordinator.log_since(mark), 30,
                 "the coordinator to find Redis gone")
        server.start()
        replies = [f.result() for f in futures]
        pool.shutdown()
        assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies if r.status_code != 200]
        assert {t["state"] for t in cluster.tasks()} == {"done"}
        assert cluster.queue_depths() == {"pending": 0, "inflight": 0, "dead": 0}
    finally:
        cluster.stop()
        server.stop()


def test_every_node_answers_who_leads_a_worker_from_gossip(cluster):
    coordinator = cluster.coordinator("c0", [], gateway=True)
    seed = f"{coordinator.host}:{coordinator.ports['gossip']}"
    worker = cluster._node("w0", ["worker"], {"worker": {"backend": "sim"}, "cluster": {"seeds": [seed]}})
    cluster.start(coordinator, worker)
    leader = wait_for(cluster.leader, 20, "a leader")
    key = worker.api_key()

    def worker_says():
        reply = httpx.get(f"{worker.metrics_url}/v1/cluster/leader", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        return reply.status_code == 200 and reply.json()

    answer = wait_for(worker_says, 30, "the worker-only node to know the leader")
    assert answer == {"id": "c0", "epoch": int(leader["epoch"]), "address": leader["address"]}
    assert httpx.get(f"{worker.metrics_url}/v1/cluster/leader", timeout=10).status_code == 401

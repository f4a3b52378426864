"""A real worker's capacity comes from its memory budget, reaches gossip and the coordinator's pool,
and bounds what the coordinator hands it: real daemons, the real SmolLM2, real Redis."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading

import httpx
import pytest

from cluster_harness import Cluster, chat, wait_for
from cynode.engines.kv_memory import batch_capacity
from cynode.engines.memory_manager import estimate_footprint
from cynode.engines.registry import builtin_spec

pytestmark = pytest.mark.slow

# SmolLM2-135M in float32: 30 layers x 3 KV heads x 64 dims x keys and values x 4 bytes, 8192 context.
PER_TOKEN, CONTEXT = 2 * 30 * 3 * 64 * 4, 8192
CAPACITY = 3


def budget_for(sequences: int) -> int:
    """A worker memory budget whose KV share (what the weights leave) holds `sequences` full contexts."""
    return estimate_footprint(builtin_spec()) + sequences * PER_TOKEN * CONTEXT + 4096


def admin_get(node, path: str, base: str | None = None) -> dict:
    reply = httpx.get(f"{base or node.base_url}{path}", headers={"Authorization": f"Bearer {node.api_key()}"},
                      timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.mark.timeout(900)
def test_the_workers_capacity_from_its_memory_budget_is_in_gossip_the_pool_and_bounds_its_assignments(
        cluster: Cluster):
    assert batch_capacity(budget_for(CAPACITY) - estimate_footprint(builtin_spec()), PER_TOKEN, CONTEXT) == CAPACITY
    worker = cluster._node("w1", ["worker"], {"worker": {"backend": "cpu-transformers",
                                                         "memory_budget": budget_for(CAPACITY)}})
    front = cluster.coordinator("c1", [worker], gateway=True,
                                cluster={"seeds": [f"{worker.host}:{worker.ports['gossip']}"]})
    cluster.start(worker, front)

    # Gossip: the worker's own view and the coordinator node's, as `cynode members` prints them.
    def gossip_capacity(node, base):
        members = admin_get(node, "/v1/cluster/members", base)["members"]
        return next((m["meta"].get("capacity") for m in members if m["id"] == "w1"), None)

    wait_for(lambda: gossip_capacity(front, front.metrics_url) == CAPACITY, 60, "the coordinator node to see capacity 3")
    assert gossip_capacity(worker, worker.metrics_url) == CAPACITY
    members = subprocess.run([sys.executable, "-m", "cynode", "members", "-c", str(front.config_path)],
                             capture_output=True, text=True, timeout=60)
    assert members.returncode == 0, members.stderr
    assert f"capacity={CAPACITY}" in next(line for line in members.stdout.splitlines() if line.startswith("w1 "))

    # The coordinator's pool has it from the worker's health reply.
    def pool_entry() -> dict:
        return next(w for w in admin_get(front, "/v1/cluster/status")["workers"] if w["id"] == "w1")

    wait_for(lambda: pool_entry()["capacity"] == CAPACITY, 60, "the pool to hold capacity 3")

    # Twice the capacity at once: the coordinator leases at most 3 to the worker, the rest wait their turn.
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            entry = pool_entry()
            seen.append((entry["leased"], entry["active"]))
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(2 * CAPACITY) as pool:
            answers = list(pool.map(lambda i: chat(front, "smollm2-135m-instruct", content=f"Count to {20 + i}.",
                                                   max_tokens=40, stream=True, cache=False, timeout=600),
                                    range(2 * CAPACITY)))
    finally:
        stop.set()
        watcher.join(10)
    assert all(finish in ("stop", "length") and text for text, finish, _ in answers)
    assert seen and max(leased for leased, _ in seen) == CAPACITY, seen  # filled, never beyond
    assert max(active for _, active in seen) <= CAPACITY, seen

"""A real worker's capacity comes from its memory budget, reaches gossip and the coordinator's pool,
and bounds what the coordinator hands it: real daemons, the real SmolLM2, real Redis.

Two workers with the same budget: w1 serves the built-in model (loaded at start), w2 a models.json
folder entry (loaded on first use). Before its first load w2 already announces the capacity the
load will give (from the folder's config.json), not a placeholder: a coordinator that believed a
placeholder (8 before this fix) would hand w2 more requests than it batches, or fewer.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import threading

import httpx
import pytest

from cluster_harness import Cluster, chat, wait_for
from cynode.engines import BUILTIN_MODEL_ID
from cynode.engines.kv_memory import batch_capacity
from cynode.engines.memory_manager import estimate_footprint
from cynode.engines.registry import ModelRegistry, builtin_spec

pytestmark = pytest.mark.slow

# SmolLM2-135M in float32: 30 layers x 3 KV heads x 64 dims x keys and values x 4 bytes, 8192 context.
PER_TOKEN, CONTEXT = 2 * 30 * 3 * 64 * 4, 8192
CAPACITY = 3


def budget_for(footprint: int, sequences: int) -> int:
    """A worker memory budget whose KV share (what the weights leave) holds `sequences` full contexts."""
    return footprint + sequences * PER_TOKEN * CONTEXT + 4096


def admin_get(node, path: str, base: str | None = None) -> dict:
    reply = httpx.get(f"{base or node.base_url}{path}", headers={"Authorization": f"Bearer {node.api_key()}"},
                      timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()


def gossip_meta(node, member: str) -> dict:
    members = admin_get(node, "/v1/cluster/members", node.metrics_url)["members"]
    return next((m["meta"] for m in members if m["id"] == member), {})


@pytest.mark.timeout(900)
def test_a_workers_capacity_from_its_memory_budget_is_in_gossip_and_the_pool_and_bounds_its_leases(
        cluster: Cluster, builtin_model_dir, tmp_path):
    registry = tmp_path / "models.json"
    registry.write_text(json.dumps({"models": [{"id": "smol-folder", "source": {"path": str(builtin_model_dir)}}]}))
    folder_spec = ModelRegistry.load(registry).resolve("smol-folder")
    budgets = {"w1": budget_for(estimate_footprint(builtin_spec()), CAPACITY),
               "w2": budget_for(estimate_footprint(folder_spec), CAPACITY)}
    assert batch_capacity(CAPACITY * PER_TOKEN * CONTEXT + 4096, PER_TOKEN, CONTEXT) == CAPACITY
    w1 = cluster._node("w1", ["worker"], {"worker": {"backend": "cpu-transformers", "memory_budget": budgets["w1"]}})
    w2 = cluster._node("w2", ["worker"], {"worker": {"backend": "cpu-transformers", "memory_budget": budgets["w2"],
                                                     "model_registry": str(registry)}})
    front = cluster.coordinator("c1", [w1, w2], gateway=True,
                                cluster={"seeds": [f"{w.host}:{w.ports['gossip']}" for w in (w1, w2)]})
    cluster.start(w1, w2)
    cluster.start(front)  # after the workers: a seed not listening yet is not tried again soon

    # Gossip, as the coordinator's node sees it and as `cynode members` prints it.
    wait_for(lambda: gossip_meta(front, "w1").get("capacity") == CAPACITY, 60, "w1's capacity 3 in gossip")
    wait_for(lambda: gossip_meta(front, "w2").get("capacity") == CAPACITY, 60, "w2's capacity 3 in gossip")
    assert gossip_meta(front, "w2")["loaded"] == []  # announced before its first load
    members = subprocess.run([sys.executable, "-m", "cynode", "members", "-c", str(front.config_path)],
                             capture_output=True, text=True, timeout=60)
    assert members.returncode == 0, members.stderr
    for name in ("w1", "w2"):
        assert f"capacity={CAPACITY}" in next(line for line in members.stdout.splitlines() if line.startswith(name + " "))

    # The coordinator's pool has it from the workers' health replies.
    def pool() -> dict[str, dict]:
        return {w["id"]: w for w in admin_get(front, "/v1/cluster/status")["workers"]}

    wait_for(lambda: all(pool()[n]["capacity"] == CAPACITY for n in ("w1", "w2")), 60, "the pool to hold capacity 3")

    # Twice what each batches, at once: neither is ever leased more than 3; the rest wait their turn.
    seen: list[dict[str, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append({n: (w["leased"], w["active"]) for n, w in pool().items()})
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    jobs = [(BUILTIN_MODEL_ID if i % 2 else "smol-folder", i) for i in range(4 * CAPACITY)]
    try:
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as threads:
            answers = list(threads.map(lambda job: chat(front, job[0], content=f"Count to {20 + job[1]}.", max_tokens=32,
                                                        stream=True, cache=False, timeout=600), jobs))
    finally:
        stop.set()
        watcher.join(10)
    assert all(finish in ("stop", "length") and text for text, finish, _ in answers)
    for name in ("w1", "w2"):
        assert max(s[name][0] for s in seen) <= CAPACITY and max(s[name][1] for s in seen) <= CAPACITY, seen
    assert max(max(s[n][0] for n in ("w1", "w2")) for s in seen) == CAPACITY, seen  # the bound was reached
    assert "smol-folder" in gossip_meta(front, "w2")["loaded"]  # (w2 serves the built-in model as well)
    assert pool()["w2"]["capacity"] <= CAPACITY

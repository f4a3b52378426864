"""A model a worker adds while running (models.json reloaded, an adapter published) is routed to
within seconds: the worker's gossip says its models changed and the coordinator checks it at once,
instead of at its next health check (here a minute away)."""

from __future__ import annotations

import json
import signal
import time

import httpx

from cluster_harness import Cluster, chat, wait_for
from daemon_harness import CynodeProcess

HEALTH_EVERY_S = 60  # the periodic check would find the new model only this long after it appears
WITHIN_S = 10.0


def registry_file(path, *ids: str) -> None:
    path.write_text(json.dumps({"models": [{"id": i, "engine": "sim"} for i in ids]}))


def served(gateway: CynodeProcess) -> list[str]:
    reply = httpx.get(f"{gateway.base_url}/v1/models", headers={"Authorization": f"Bearer {gateway.api_key()}"}, timeout=10)
    assert reply.status_code == 200, reply.text
    return [m["id"] for m in reply.json()["data"]]


def test_a_model_added_on_a_worker_is_routed_to_long_before_the_next_health_check(cluster: Cluster):
    registry = cluster.workdir / "models.json"
    registry_file(registry, "sim-a")
    coordinator = CynodeProcess(cluster.workdir / "c", host="127.0.0.2", redis_url=cluster.redis_url,
                                models_dir=cluster.models_dir, extra={
        "node": {"id": "c", "roles": ["coordinator", "gateway"]},
        "cluster": {"name": cluster.name, "key_file": str(cluster.key_file)},
        "coordinator": {"health_check_interval": f"{HEALTH_EVERY_S}s", "health_check_timeout": "5s"},
    })
    cluster.nodes["c"] = coordinator
    cluster.start(coordinator)
    worker = CynodeProcess(cluster.workdir / "w", host="127.0.0.3", redis_url=cluster.redis_url,
                           models_dir=cluster.models_dir, extra={
        "node": {"id": "w", "roles": ["worker"]},
        "cluster": {"name": cluster.name, "key_file": str(cluster.key_file),
                    "seeds": [f"127.0.0.2:{coordinator.ports['gossip']}"]},
        "worker": {"backend": "sim", "model_registry": str(registry)},
    })
    cluster.nodes["w"] = worker
    cluster.start(worker)
    # A worker that joins is checked when gossip brings it, not at the coordinator's next round.
    wait_for(lambda: "sim-a" in served(coordinator), WITHIN_S, "the joining worker's model is listed")

    registry_file(registry, "sim-a", "sim-b")
    worker.proc.send_signal(signal.SIGHUP)
    started = time.monotonic()
    wait_for(lambda: "sim-b" in served(coordinator), WITHIN_S, "the added model is listed")
    reply = chat(coordinator, "sim-b", content="hello", max_tokens=4, cache=False)
    assert reply.status_code == 200, reply.text
    assert reply.headers["X-Cache"] == "miss"
    assert time.monotonic() - started < HEALTH_EVERY_S / 2

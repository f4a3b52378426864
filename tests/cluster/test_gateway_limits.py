"""Two real gateway daemons on one Redis hold one key's requests_per_minute between them; the
refusals are OpenAI-shaped 429s with Retry-After and x-ratelimit-* headers; the key's priority
is the queue priority of its requests; its usage is counted per day."""

from __future__ import annotations

import concurrent.futures
import os
import time

import httpx
import pytest
import redis

from cluster_harness import Cluster, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

METERED = "sk-cynode-metered-0123456789abcdef"
ADMIN = "sk-cynode-admin-0123456789abcdef"
RPM = 6


def keys_file(path) -> str:
    path.write_text(f"""
[[keys]]
name = "admin"
key = "{ADMIN}"
scopes = ["inference", "training", "admin"]

[[keys]]
name = "metered"
key = "{METERED}"
requests_per_minute = {RPM}
priority = 7
""")
    os.chmod(path, 0o600)
    return str(path)


def coordinator_settings(worker) -> dict:
    return {"workers": [{"id": worker.config_id, "host": worker.host, "port": worker.ports["worker"]}],
            "leader_ttl": "3s", "health_check_interval": "500ms", "health_check_timeout": "500ms"}


def test_two_gateways_hold_one_keys_requests_per_minute_together(cluster: Cluster, tmp_path):
    api_keys = keys_file(tmp_path / "api-keys.toml")
    worker = cluster.sim_worker("w1", concurrency=8)
    cluster.start(worker)
    first = cluster._node("c1", ["coordinator", "gateway"], {"coordinator": coordinator_settings(worker),
                                                             "gateway": {"api_keys_file": api_keys}})
    second = cluster._node("g2", ["gateway"], {"gateway": {"api_keys_file": api_keys}})
    cluster.start(first, second)

    def ask(i: int) -> httpx.Response:
        gateway = (first, second)[i % 2]
        body = {"model": "sim", "messages": [{"role": "user", "content": f"count {i}"}], "max_tokens": 2}
        return httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {METERED}", "Cache-Control": "no-cache"})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, range(3 * RPM)))
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert len(ok) == RPM, [(r.status_code, r.text[:200]) for r in replies]
    assert len(refused) == 2 * RPM
    for reply in refused:
        assert int(reply.headers["Retry-After"]) >= 1
        assert reply.headers["x-ratelimit-limit-requests"] == str(RPM)
        assert reply.headers["x-ratelimit-remaining-requests"] == "0"
        assert reply.json()["error"]["type"] == "rate_limit_error"
        assert reply.json()["error"]["code"] == "rate_limit_exceeded"
    for reply in ok:
        assert reply.headers["x-ratelimit-limit-requests"] == str(RPM)
        assert reply.headers["X-Cache"] == "miss"

    # The key's priority is the priority its tasks were queued with.
    assert {t["priority"] for t in cluster.tasks()} == {"7"}

    # Usage per day, summed over both gateways (settled off the response path).
    day = time.strftime("%Y%m%d", time.gmtime())
    with redis.Redis.from_url(cluster.redis_url, decode_responses=True) as r:
        usage_key = f"cynode:{cluster.name}:usage:metered:{day}"
        wait_for(lambda: r.hget(usage_key, "requests") == str(RPM), 30, "usage of both gateways settled")
        usage = r.hgetall(usage_key)
    assert usage["requests"] == str(RPM)
    assert int(usage["completion_tokens"]) == 2 * RPM

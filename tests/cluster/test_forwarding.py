"""Any node answers the API: a worker-only daemon forwards /v1/chat/completions to the gateway it
finds through gossip, streamed and not, the caller's key passed through, and says so in a header."""

from __future__ import annotations

import json

import httpx
import pytest

from cluster_harness import Cluster, chat, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_a_worker_only_node_forwards_the_api_to_a_gateway_peer(cluster: Cluster):
    gateway = cluster.coordinator("c1", [], gateway=True)
    cluster.start(gateway)
    seed = f"{gateway.host}:{gateway.ports['gossip']}"
    worker = cluster._node("w1", ["worker"], {"worker": {"backend": "sim"}, "cluster": {"seeds": [seed]}})
    cluster.start(worker)
    key = gateway.api_key()  # the gateway authenticates; the worker only passes the header on
    headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}
    body = {"model": "sim", "messages": [{"role": "user", "content": "forward me"}], "max_tokens": 6, "temperature": 0}

    def answered():
        reply = httpx.post(f"{worker.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
        return reply if reply.status_code == 200 else None

    # The worker joins gossip, the coordinator finds it, and the gateway is known to the worker.
    reply = wait_for(answered, 60, "a forwarded answer")
    assert reply.headers["X-Cynode-Forwarded-By"] == "w1"
    assert reply.headers["X-Cynode-Gateway"] == "c1"
    assert reply.headers["X-Cache"] == "miss"
    text = reply.json()["choices"][0]["message"]["content"]
    direct = chat(gateway, "sim", content="forward me", max_tokens=6, cache=False)
    assert direct.status_code == 200 and direct.json()["choices"][0]["message"]["content"] == text

    # Streamed: the events arrive as the gateway sends them, the same text.
    streamed, events = "", []
    with httpx.stream("POST", f"{worker.base_url}/v1/chat/completions", json={**body, "stream": True},
                      headers=headers, timeout=60) as sse:
        assert sse.status_code == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
        assert sse.headers["X-Cynode-Forwarded-By"] == "w1"
        for line in sse.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
                if events[-1].get("choices"):
                    streamed += events[-1]["choices"][0]["delta"].get("content") or ""
            elif line == "data: [DONE]":
                events.append("done")
    assert streamed == text and events[-1] == "done"
    assert events[-2]["choices"][0]["finish_reason"] == "length"

    # The gateway's own refusals come back unchanged.
    refused = httpx.post(f"{worker.base_url}/v1/chat/completions", json=body, timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"
    models = httpx.get(f"{worker.base_url}/v1/models", headers=headers, timeout=30)
    assert models.status_code == 200 and "sim" in {m["id"] for m in models.json()["data"]}

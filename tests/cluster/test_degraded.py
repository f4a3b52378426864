"""Redis stopped: the gateway keeps answering in degraded mode, straight from a worker it knows
through gossip, nothing cached; Redis back: the leader returns and caching and queueing resume."""

from __future__ import annotations

import json

import httpx
import pytest

from cluster_harness import Cluster, wait_for
from redis_harness import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_redis_stopped_chat_still_answers_degraded_and_resumes_caching_when_it_is_back(tmp_path, models_dir):
    server = RedisServer(tmp_path / "redis").start()
    cluster = Cluster(tmp_path, server.url, models_dir)
    try:
        worker = cluster._node("w1", ["worker"], {"worker": {"backend": "sim"}})
        cluster.start(worker)
        static = [{"id": "w1", "host": worker.host, "port": worker.ports["worker"]}]
        gateway = cluster._node("c1", ["coordinator", "gateway"], {
            "coordinator": {"workers": static, "leader_ttl": "3s", "health_check_interval": "500ms",
                            "health_check_timeout": "500ms"},
            "gateway": {"degraded_after": "1s"},
            "cluster": {"seeds": [f"{worker.host}:{worker.ports['gossip']}"]}})
        cluster.start(gateway)
        key = gateway.api_key()

        def ask(content: str, *, cache: bool = False, stream: bool = False) -> httpx.Response:
            body = {"model": "sim", "messages": [{"role": "user", "content": content}], "max_tokens": 5,
                    "temperature": 0, "stream": stream}
            headers = {"Authorization": f"Bearer {key}", **({} if cache else {"Cache-Control": "no-cache"})}
            return httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)

        def text_of(reply: httpx.Response) -> str:
            if reply.headers["content-type"].startswith("text/event-stream"):
                events = [json.loads(line[6:]) for line in reply.text.splitlines()
                          if line.startswith("data: ") and line != "data: [DONE]"]
                return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
            return reply.json()["choices"][0]["message"]["content"]

        def members() -> dict:
            reply = httpx.get(f"{gateway.base_url}/v1/cluster/members", headers={"Authorization": f"Bearer {key}"})
            return {m["id"]: m["state"] for m in reply.json()["members"]}

        wait_for(lambda: members().get("w1") == "alive", 30, "the gateway to know the worker through gossip")
        normal = ask("steady")
        assert normal.status_code == 200 and "X-Cynode-Degraded" not in normal.headers
        tasks_before = len(cluster.tasks())

        mark = gateway.log_mark()
        server.stop()
        wait_for(lambda: "degraded mode (straight" in gateway.log_since(mark), 30, "degraded mode")
        for stream in (False, True):
            reply = ask("steady", cache=True, stream=stream)
            assert reply.status_code == 200, reply.text
            assert reply.headers["X-Cynode-Degraded"] == "true" and reply.headers["X-Cache"] == "miss"
            assert text_of(reply) == text_of(normal)

        mark = gateway.log_mark()
        server.start()
        wait_for(lambda: "degraded mode ends" in gateway.log_since(mark), 60, "the leader back")
        first, second = ask("after", cache=True), ask("after", cache=True)
        assert first.status_code == second.status_code == 200
        assert "X-Cynode-Degraded" not in first.headers
        assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
        assert len(cluster.tasks()) > tasks_before  # queued through the leader again
    finally:
        cluster.stop()
        server.stop()

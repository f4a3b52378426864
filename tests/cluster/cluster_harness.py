"""Several real `cynode run` daemons sharing one cluster key and one Redis, on loopback."""

from __future__ import annotations

import concurrent.futures
import json
import uuid
from pathlib import Path

import httpx
import redis

from cynode.cluster_key import ensure_key_file
from daemon_harness import CynodeProcess, wait_for  # noqa: F401  (the cluster tests import it from here)


class Cluster:
    def __init__(self, workdir: Path, redis_url: str, models_dir: Path) -> None:
        self.workdir = workdir
        self.redis_url = redis_url
        self.models_dir = models_dir
        self.name = f"test-{uuid.uuid4().hex[:8]}"
        self.key_file = workdir / "cluster.key"
        ensure_key_file(self.key_file)
        self.nodes: dict[str, CynodeProcess] = {}
        # node.toml tables every node made from now on gets (e.g. [redis] of a TLS Redis, [gateway] API keys).
        self.common: dict[str, dict] = {}

    def _node(self, name: str, roles: list[str], extra: dict | None = None) -> CynodeProcess:
        config = {"node": {"id": name, "roles": roles}, "cluster": {"name": self.name, "key_file": str(self.key_file)}}
        for section, values in [*self.common.items(), *(extra or {}).items()]:
            config.setdefault(section, {}).update(values)
        node = CynodeProcess(self.workdir / name, redis_url=self.redis_url, models_dir=self.models_dir, extra=config)
        self.nodes[name] = node
        return node

    def sim_worker(self, name: str, *, concurrency: int = 2) -> CynodeProcess:
        # 25 tokens/s: streams last long enough to kill things in the middle of them.
        return self._node(name, ["worker"], {"worker": {"backend": "sim", "max_concurrency": concurrency,
                                                        "sim": {"tokens_per_second": 25.0, "answer_tokens": 200}}})

    def coordinator(self, name: str, workers: list[CynodeProcess], *, gateway: bool = False, **settings) -> CynodeProcess:
        static = [{"id": w.config_id, "host": w.host, "port": w.ports["worker"]} for w in workers]
        coordinator = {"workers": static, "leader_ttl": "3s", "health_check_interval": "500ms",
                       "health_check_timeout": "500ms", "max_retries": 1}
        extra = {"coordinator": coordinator}
        for section, values in settings.items():
            extra.setdefault(section, {}).update(values)
        return self._node(name, ["coordinator", "gateway"] if gateway else ["coordinator"], extra)

    def gateway(self, name: str) -> CynodeProcess:
        return self._node(name, ["gateway"])

    def start(self, *nodes: CynodeProcess) -> None:
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda n: n.start(timeout=120), nodes))

    def stop(self) -> None:
        for node in self.nodes.values():
            node.kill()

    # What Redis says, read the way an operator would.
    def _redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def leader(self) -> dict | None:
        with self._redis() as r:
            holder = r.get(f"cynode:{self.name}:leader")
            info = r.hgetall(f"cynode:{self.name}:leader:info")
        return info if holder and info.get("holder") == holder else None

    def tasks(self) -> list[dict]:
        with self._redis() as r:
            keys = r.keys(f"cynode:{self.name}:task:*")
            return [{"id": k.rsplit(":", 1)[1], **r.hgetall(k)} for k in keys]

    def queue_depths(self) -> dict[str, int]:
        with self._redis() as r:
            return {n: r.zcard(f"cynode:{self.name}:{n}") for n in ("pending", "inflight", "dead")}


def chat(gateway: CynodeProcess, model: str, *, content: str, max_tokens: int, stream: bool = False, timeout: float = 120,
         cache: bool = True, on_first=None):
    """One chat request; streamed: (text, finish reason, events), calling `on_first` at the first content token."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": max_tokens, "stream": stream}
    headers = {"Authorization": f"Bearer {gateway.api_key()}", **({} if cache else {"Cache-Control": "no-cache"})}
    if not stream:
        return httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers, timeout=timeout)
    text, finish, events = "", None, []
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers, timeout=timeout) as reply:
        assert reply.status_code == 200, reply.read()
        # A stream that starts while its request still waits in the coordinator's queue has its
        # headers sent before the cache is known: no X-Cache then.
        assert cache or reply.headers.get("X-Cache") in ("miss", None), reply.headers
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            events.append(event)
            if event.get("choices"):
                delta = event["choices"][0]["delta"].get("content") or ""
                if delta and not text and on_first is not None:
                    on_first()
                text += delta
                finish = event["choices"][0]["finish_reason"] or finish
    return text, finish, events

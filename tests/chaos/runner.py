"""A chaos cluster: real `cynode run` daemons, each on its own loopback address (127.0.0.x), one
shared real Redis, and the faults a test or a soak injects into them.

Every node gets an address of its own so that what a fault does can be aimed at one node (its ports)
and so that the logs, the Redis client list and the gossip member list name nodes by address.
Network namespaces with veth pairs would isolate nodes further (`ip netns` works as root here), but
the daemons only need distinct addresses for every fault this suite injects; see docs/chaos.md.

    cluster = ChaosCluster(workdir, redis, models_dir)
    workers = [cluster.worker(f"w{i}") for i in range(2)]
    coordinators = [cluster.coordinator(f"c{i}", workers) for i in range(3)]
    gateway = cluster.gateway("g0")
    cluster.start()
    ...
    cluster.kill(cluster.leader_node())        # kill -9
    cluster.pause(node) / cluster.resume(node)   # SIGSTOP / SIGCONT
"""

from __future__ import annotations

import concurrent.futures
import itertools
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from cynode.cluster_key import ensure_key_file
from daemon_harness import CynodeProcess, wait_for

_hosts = itertools.count(20)


def next_host() -> str:
    """A loopback address of its own for the next node (127.0.0.20, .21, ...)."""
    return f"127.0.0.{next(_hosts) % 230 + 20}"


class ChaosCluster:
    def __init__(self, workdir: Path, redis_url: str, models_dir: Path, *, name: str | None = None,
                 redis_section: dict | None = None, redis_client: Callable[[], redis.Redis] | None = None,
                 hosts: Callable[[], str] = next_host) -> None:
        """`redis_client`: how the test itself reaches the cluster's Redis (default: `redis_url`),
        e.g. through Sentinels that may have moved the master."""
        self.workdir = workdir
        self.redis_url = redis_url
        self._redis_client = redis_client
        self._hosts = hosts
        self.redis_section = redis_section or {}
        self.models_dir = models_dir
        self.name = name or f"chaos-{uuid.uuid4().hex[:8]}"
        self.key_file = workdir / "cluster.key"
        workdir.mkdir(parents=True, exist_ok=True)
        ensure_key_file(self.key_file)
        self.nodes: dict[str, CynodeProcess] = {}
        self.roles: dict[str, list[str]] = {}
        self._seed: str | None = None

    # --- building the cluster -------------------------------------------------------------------
    def node(self, name: str, roles: list[str], extra: dict | None = None, *, host: str | None = None,
             launcher: tuple[str, ...] = (), redis_url: str | None = None) -> CynodeProcess:
        config = {"node": {"id": name, "roles": roles, "drain_timeout": "5s"},
                  "cluster": {"name": self.name, "key_file": str(self.key_file),
                              "seeds": [self._seed] if self._seed else []},
                  "redis": dict(self.redis_section)}
        for section, values in (extra or {}).items():
            config.setdefault(section, {}).update(values)
        process = CynodeProcess(self.workdir / name, host=host or self._hosts(), redis_url=redis_url or self.redis_url,
                                models_dir=self.models_dir, extra=config, launcher=launcher)
        if self._seed is None:
            self._seed = f"{process.host}:{process.ports['gossip']}"
        self.nodes[name] = process
        self.roles[name] = roles
        return process

    def worker(self, name: str, *, concurrency: int = 4, tokens_per_second: float = 50.0, ttft: str = "20ms",
               backend: str = "sim") -> CynodeProcess:
        worker = {"backend": backend, "max_concurrency": concurrency}
        if backend == "sim":
            worker["sim"] = {"tokens_per_second": tokens_per_second, "answer_tokens": 400, "ttft": ttft}
        return self.node(name, ["worker"], {"worker": worker})

    def coordinator(self, name: str, workers: list[CynodeProcess], *, gateway: bool = False, placement: dict | None = None,
                    **coordinator) -> CynodeProcess:
        """Coordinator with the default leader TTL (the point is to measure the defaults)."""
        static = [{"id": w.config_id, "host": w.host, "port": w.ports["worker"]} for w in workers]
        settings = {"workers": static, "health_check_interval": "500ms", "health_check_timeout": "500ms",
                    "max_retries": 1, **coordinator}
        return self.node(name, ["coordinator", "gateway"] if gateway else ["coordinator"], {"coordinator": settings},
                         **(placement or {}))

    def gateway(self, name: str) -> CynodeProcess:
        return self.node(name, ["gateway"])

    def start(self, *nodes: CynodeProcess, timeout: float = 180) -> None:
        todo = nodes or tuple(n for n in self.nodes.values() if n.proc is None)
        with concurrent.futures.ThreadPoolExecutor(len(todo)) as pool:
            list(pool.map(lambda n: n.start(timeout=timeout), todo))

    def restart(self, node: CynodeProcess, timeout: float = 180) -> None:
        node.kill()
        node.start(timeout=timeout)

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.proc and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)  # leave nothing stopped behind
            node.kill()

    def with_role(self, role: str) -> list[CynodeProcess]:
        return [self.nodes[n] for n, roles in self.roles.items() if role in roles]

    def gateways(self) -> list[CynodeProcess]:
        return self.with_role("gateway")

    # --- faults ---------------------------------------------------------------------------------
    @staticmethod
    def kill(node: CynodeProcess) -> float:
        """kill -9; returns when it was sent (time.monotonic)."""
        at = time.monotonic()
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)
        return at

    @staticmethod
    def terminate(node: CynodeProcess) -> float:
        at = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        return at

    @staticmethod
    def pause(node: CynodeProcess) -> float:
        at = time.monotonic()
        node.proc.send_signal(signal.SIGSTOP)
        return at

    @staticmethod
    def resume(node: CynodeProcess) -> float:
        at = time.monotonic()
        node.proc.send_signal(signal.SIGCONT)
        return at

    # --- what Redis says ------------------------------------------------------------------------
    def redis(self) -> redis.Redis:
        if self._redis_client is not None:
            return self._redis_client()
        return redis.Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=5)

    def key(self, *parts: str) -> str:
        return f"cynode:{self.name}:" + ":".join(parts)

    def leader(self) -> dict | None:
        try:
            with self.redis() as r:
                holder = r.get(self.key("leader"))
                info = r.hgetall(self.key("leader", "info"))
        except redis.RedisError:
            return None
        return info if holder and info.get("holder") == holder else None

    def leader_node(self, timeout: float = 30) -> CynodeProcess:
        info = wait_for(self.leader, timeout, "a leader")
        return self.nodes[info["id"]]

    def tasks(self) -> list[dict]:
        with self.redis() as r:
            keys = list(r.scan_iter(self.key("task", "*"), count=1000))
            pipe = r.pipeline(transaction=False)
            for k in keys:
                pipe.hgetall(k)
            return [{"id": k.rsplit(":", 1)[1], **fields} for k, fields in zip(keys, pipe.execute())]

    def queue_depths(self) -> dict[str, int]:
        with self.redis() as r:
            return {n: r.zcard(self.key(n)) for n in ("pending", "inflight", "dead")}

    def settled(self) -> bool:
        """Nothing pending or in flight (every accepted task reached an end)."""
        try:
            depths = self.queue_depths()
        except redis.RedisError:
            return False
        return depths["pending"] == 0 and depths["inflight"] == 0

    def model(self, gateway: CynodeProcess, timeout: float = 60) -> str:
        key = gateway.api_key()

        def listed():
            try:
                reply = httpx.get(f"{gateway.base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
            except httpx.HTTPError:
                return None
            return reply.status_code == 200 and reply.json()["data"] and reply.json()["data"][0]["id"]
        return wait_for(listed, timeout, "a model to be served")

    def wait_serving(self, gateway: CynodeProcess, model: str, timeout: float = 60) -> None:
        """Until one request goes through end to end (a leader and a healthy worker exist)."""
        key = gateway.api_key()

        def once():
            try:
                reply = httpx.post(f"{gateway.base_url}/v1/chat/completions", timeout=10, headers={
                    "Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}, json={
                    "model": model, "messages": [{"role": "user", "content": "ready?"}], "max_tokens": 2})
            except httpx.HTTPError:
                return False
            return reply.status_code == 200
        wait_for(once, timeout, "the cluster to serve a request")

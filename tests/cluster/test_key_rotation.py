"""Rotating the cluster key on three real daemons while requests flow through two gateways: every
step (`cynode cluster-key add / promote / retire` and a SIGHUP on each node) keeps gossip and mTLS
gRPC working, no request fails, and at the end the retired key opens nothing."""

from __future__ import annotations

import base64
import shutil
import signal
import subprocess
import sys
import threading

import grpc
import grpc.aio
import httpx
import pytest

from cluster_harness import Cluster, chat, wait_for
from cynode.cluster_key import generate_key, key_id, load_keys
from cynode.peer_auth import PeerAuth
from cynode.rpc import worker_pb2, worker_pb2_grpc
from daemon_harness import CynodeProcess


def node(cluster: Cluster, name: str, host: str, roles: list[str], seeds: list[str], **sections) -> CynodeProcess:
    key_file = cluster.workdir / f"{name}.key"  # each node has its own copy, as on real machines
    shutil.copy(cluster.key_file, key_file)
    key_file.chmod(0o600)
    extra = {"node": {"id": name, "roles": roles},
             "cluster": {"name": cluster.name, "key_file": str(key_file), "seeds": seeds},
             "worker": {"backend": "sim", "sim": {"tokens_per_second": 200.0}}, **sections}
    process = CynodeProcess(cluster.workdir / name, host=host, redis_url=cluster.redis_url,
                            models_dir=cluster.models_dir, extra=extra)
    process.key_file = key_file
    cluster.nodes[name] = process
    return process


def members(of: CynodeProcess) -> dict[str, str]:
    reply = httpx.get(f"{of.metrics_url}/v1/cluster/members", headers={"Authorization": f"Bearer {of.api_key()}"}, timeout=10)
    return {m["id"]: m["state"] for m in reply.json()["members"]}


def cluster_key(*args: str, key_file, stdin: str | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "cynode", "cluster-key", *args, "--key-file", str(key_file)],
                          input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def worker_health(of: CynodeProcess, *ring: bytes) -> grpc.StatusCode:
    async with PeerAuth(ring).channel(f"{of.host}:{of.ports['worker']}") as channel:
        try:
            await worker_pb2_grpc.WorkerStub(channel).Health(worker_pb2.HealthRequest(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


class Traffic:
    """Requests one after another through both gateways, on a thread, until stopped."""

    def __init__(self, gateways: list[CynodeProcess]) -> None:
        self.gateways, self.ok, self.failures = gateways, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            gateway = self.gateways[i % len(self.gateways)]
            try:
                reply = chat(gateway, "sim", content=f"rotation {i}", max_tokens=4, cache=False, timeout=30)
                if reply.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append((gateway.config_id, reply.status_code, reply.text[:200]))
            except httpx.HTTPError as exc:
                self.failures.append((gateway.config_id, type(exc).__name__, str(exc)[:200]))
            i += 1

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def flows(self, more: int = 4) -> None:
        target = self.ok + more
        wait_for(lambda: self.ok >= target or self.failures, 60, f"{more} more requests to succeed")
        assert not self.failures, self.failures


@pytest.mark.timeout(420)
async def test_three_nodes_rotate_their_key_step_by_step_with_requests_flowing_and_none_fails(cluster):
    (old,) = load_keys(cluster.key_file)
    new_text = generate_key()
    new = base64.b64decode(new_text)
    worker = node(cluster, "w", "127.0.0.2", ["worker"], [])
    seeds = [f"127.0.0.2:{worker.ports['gossip']}"]
    coordinator = node(cluster, "c", "127.0.0.3", ["coordinator", "gateway"], seeds, coordinator={
        "workers": [{"id": "w", "host": worker.host, "port": worker.ports["worker"]}], "leader_ttl": "3s",
        "health_check_interval": "500ms", "health_check_timeout": "500ms"})
    gateway = node(cluster, "g", "127.0.0.4", ["gateway"], seeds)
    nodes = [worker, coordinator, gateway]
    cluster.start(*nodes)
    wait_for(lambda: all(members(n) == {"w": "alive", "c": "alive", "g": "alive"} for n in nodes), 60,
             "the three nodes to see each other in gossip")
    wait_for(lambda: chat(gateway, "sim", content="warm", max_tokens=2, cache=False).status_code == 200, 60,
             "the gateway to serve")

    steps = [("add", None, new_text), ("promote", key_id(new), None), ("retire", key_id(old), None)]
    with Traffic([coordinator, gateway]) as traffic:
        traffic.flows()
        for action, ident, stdin in steps:
            for n in nodes:  # a rolling step: one node after the other, each reloaded before the next
                mark = n.log_mark()
                cluster_key(action, *([ident] if ident else []), key_file=n.key_file, stdin=stdin)
                n.proc.send_signal(signal.SIGHUP)
                wait_for(lambda: "cluster keyring reloaded" in n.log_since(mark), 20, f"{n.config_id} to reload ({action})")
                traffic.flows()
            assert all(members(n) == {"w": "alive", "c": "alive", "g": "alive"} for n in nodes), action
    assert not traffic.failures and traffic.ok >= 40
    assert all(load_keys(n.key_file) == (new,) for n in nodes)
    assert "peer TLS: certificate for w under CA" in worker.log_path.read_text()
    # The retired key opens nothing; the new one does.
    assert await worker_health(worker, old) == grpc.StatusCode.UNAVAILABLE
    assert await worker_health(worker, new) == grpc.StatusCode.OK
    for n in nodes:  # and no key reached a log (the whole file)
        log = n.log_path.read_text()
        assert new_text not in log and base64.b64encode(old).decode() not in log

"""SIGHUP (`systemctl reload`) re-reads the API keys and the cluster keyring without a restart:
the new keys work at once, in gossip and in gRPC; a broken file is refused and the old keys stay."""

from __future__ import annotations

import base64
import signal

import grpc
import grpc.aio
import httpx
import pytest

from cluster_harness import Cluster, wait_for
from cynode.api_keys import generate_key
from cynode.cluster_key import generate_key as generate_cluster_key
from cynode.peer_auth import PeerAuth
from cynode.rpc import worker_pb2, worker_pb2_grpc
from daemon_harness import CynodeProcess

KEYS = """[[keys]]
name = "{name}"
key = "{key}"
scopes = ["inference", "training", "admin"]
"""


def write_private(path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def node(cluster: Cluster, name: str, host: str, *, key_file, api_keys_file=None, seeds=()) -> CynodeProcess:
    process = CynodeProcess(cluster.workdir / name, host=host, redis_url=cluster.redis_url, models_dir=cluster.models_dir, extra={
        "node": {"id": name, "roles": ["gateway", "worker"] if api_keys_file else ["worker"]},
        "cluster": {"name": cluster.name, "key_file": str(key_file), "seeds": list(seeds)},
        "worker": {"backend": "sim"},
        **({"gateway": {"api_keys_file": str(api_keys_file)}} if api_keys_file else {}),
    })
    cluster.nodes[name] = process
    return process


def status(of: CynodeProcess, key: str) -> int:
    return httpx.get(f"{of.metrics_url}/v1/cluster/members", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def members(of: CynodeProcess, key: str) -> dict[str, str]:
    reply = httpx.get(f"{of.metrics_url}/v1/cluster/members", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return {m["id"]: m["state"] for m in reply.json()["members"]}


async def health(of: CynodeProcess, *ring: bytes) -> grpc.StatusCode:
    async with PeerAuth(ring).channel(f"{of.host}:{of.ports['worker']}") as channel:
        try:
            await worker_pb2_grpc.WorkerStub(channel).Health(worker_pb2.HealthRequest(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.asyncio
async def test_sighup_reloads_api_keys_and_rotates_the_cluster_keyring_into_gossip_and_grpc(cluster):
    old_key, new_key = base64.b64decode(generate_cluster_key()), base64.b64decode(generate_cluster_key())
    ring = cluster.workdir / "ring.key"
    write_private(ring, base64.b64encode(old_key).decode() + "\n")
    api_keys = cluster.workdir / "api-keys.toml"
    first_api, second_api = generate_key(), generate_key()
    write_private(api_keys, KEYS.format(name="ops", key=first_api))
    a = node(cluster, "a", "127.0.0.2", key_file=ring, api_keys_file=api_keys)
    cluster.start(a)
    assert status(a, first_api) == 200 and status(a, second_api) == 401
    assert await health(a, new_key) == grpc.StatusCode.UNAVAILABLE  # no handshake under an unknown CA

    # The operator rotates: the new key first (it signs and encrypts), the old one still accepted; and
    # swaps the API key. Then `systemctl reload cynode`.
    write_private(ring, base64.b64encode(new_key).decode() + "\n" + base64.b64encode(old_key).decode() + "\n")
    write_private(api_keys, KEYS.format(name="ops", key=second_api))
    a.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "cluster keyring reloaded: 2 key(s)" in a.log() and "API keys reloaded: 1 key(s)" in a.log(), 20,
             "both reloads to be logged")

    assert status(a, second_api) == 200 and status(a, first_api) == 401
    assert await health(a, new_key) == grpc.StatusCode.OK  # gRPC verifies with the new ring
    # A peer still signing with the old key (it holds the new one second) is still accepted during the rotation.
    assert await health(a, old_key, new_key) == grpc.StatusCode.OK
    # Gossip too: a node that holds only the new key joins a, which started with only the old one.
    newcomer_ring = cluster.workdir / "newcomer.key"
    write_private(newcomer_ring, base64.b64encode(new_key).decode() + "\n")
    newcomer = node(cluster, "newcomer", "127.0.0.3", key_file=newcomer_ring, seeds=[f"127.0.0.2:{a.ports['gossip']}"])
    cluster.start(newcomer)
    wait_for(lambda: members(a, second_api).get("newcomer") == "alive", 40, "the newcomer to join after the reload")

    # A broken file is refused, named, and the node keeps the keys it has.
    ring.write_text("not base64 at all\n")
    ring.chmod(0o600)
    write_private(api_keys, "[[keys]]\nname = 'x'\n")
    a.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "cluster keyring not reloaded" in a.log() and "API keys not reloaded" in a.log(), 20,
             "the refused reloads to be logged")
    assert f"{ring}: line 1: not base64" in a.log()
    assert status(a, second_api) == 200
    assert await health(a, new_key) == grpc.StatusCode.OK
    assert members(a, second_api).get("newcomer") == "alive"
    assert a.proc.poll() is None

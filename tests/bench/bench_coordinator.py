"""Coordinator figures: leader failover, queue throughput, Admit latency.

    make bench-coordinator

1. Failover: two coordinator daemons on one Redis with the default leader TTL (10 s); kill -9 the
   leader 20 times and time kill -> new leader recorded in Redis; then 10 graceful hand-overs
   (SIGTERM, which releases the lock). Bars: <= 12 s (kill), <= 3 s (graceful); Kubernetes leader
   election takes 15-19 s.
2. Queue: claim+ack pairs per second and their p99 on a real Redis (1 and 8 concurrent clients).
3. Admit over gRPC on a cache hit and a miss (p50, p99), against a real coordinator daemon with a
   `sim` worker (the miss includes queueing and picking a worker, not generation).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "cluster"))

from cluster_harness import Cluster  # noqa: E402
from redis_harness import RedisServer  # noqa: E402

from cynode.cluster_key import load_keys  # noqa: E402
from cynode.leader_record import epoch_key  # noqa: E402
from cynode.peer_auth import PeerAuth  # noqa: E402
from cynode.redis_conn import RedisConnection  # noqa: E402
from cynode.roles.coordinator.task_queue import TaskQueue  # noqa: E402
from cynode.rpc import common_pb2, coordinator_pb2, coordinator_pb2_grpc  # noqa: E402

KILLS = 20
HANDOVERS = 10


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def wait_new_leader(cluster: Cluster, old_id: str, timeout: float = 60) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        leader = cluster.leader()
        if leader and leader["id"] != old_id:
            return time.monotonic() - start
        time.sleep(0.02)
    raise RuntimeError("no new leader")


def failover(workdir: Path, redis_url: str) -> tuple[list[float], list[float]]:
    cluster = Cluster(workdir, redis_url, workdir / "models")
    nodes = [cluster._node(f"c{i}", ["coordinator"]) for i in range(2)]
    cluster.start(*nodes)
    kills, handovers = [], []
    try:
        for round_ in range(KILLS + HANDOVERS):
            while not cluster.leader():
                time.sleep(0.05)
            leader_id = cluster.leader()["id"]
            node = cluster.nodes[leader_id]
            graceful = round_ >= KILLS
            node.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            (handovers if graceful else kills).append(wait_new_leader(cluster, leader_id))
            node.proc.wait(30)
            node.start(timeout=60)  # back as a standby for the next round
            print(f"  {'hand-over' if graceful else 'kill'} {round_ + 1}: {(handovers if graceful else kills)[-1]:.2f}s",
                  flush=True)
    finally:
        cluster.stop()
    return kills, handovers


async def queue_throughput(redis_url: str) -> dict[int, tuple[float, float]]:
    results = {}
    for clients in (1, 8):
        conn = RedisConnection(redis_url, f"bench-{uuid.uuid4().hex[:6]}")
        await conn.client.set(epoch_key(conn), 1)
        queue = TaskQueue(conn, lambda: 1, max_size=100_000, max_retries=3)
        per_client = 1000 if clients == 1 else 250
        ids = [f"t{i}" for i in range(per_client * clients)]
        for task_id in ids:
            await queue.enqueue(task_id, "m")
        latencies: list[float] = []

        async def client(mine: list[str]) -> None:
            for task_id in mine:
                start = time.perf_counter()
                lease = uuid.uuid4().hex
                await queue.claim(task_id, "w", lease, 30)
                await queue.ack(task_id, lease)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(client(ids[i::clients]) for i in range(clients)))
        elapsed = time.perf_counter() - start
        results[clients] = (len(ids) / elapsed, pct(latencies, 99) * 1000)
        await conn.close()
    return results


async def admit_latency(gateway_node, key_file: Path, model: str, samples: int = 200) -> dict[str, tuple[float, float]]:
    auth = PeerAuth(load_keys(key_file), roles=("gateway",))  # Admit is for a gateway
    async with auth.channel(f"127.0.0.1:{gateway_node.ports['coordinator']}") as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)

        def request(content: str) -> coordinator_pb2.AdmitRequest:
            return coordinator_pb2.AdmitRequest(
                request_id=uuid.uuid4().hex, model=model, messages=[common_pb2.ChatMessage(role="user", content=content)],
                sampling=common_pb2.SamplingParams(temperature=0, max_tokens=8))

        async def admit_and_finish(content: str, deltas: list[str]) -> float:
            start = time.perf_counter()
            reply = await stub.Admit(request(content), timeout=30)
            elapsed = time.perf_counter() - start
            if reply.HasField("assignment"):
                a = reply.assignment
                await stub.Complete(coordinator_pb2.CompleteRequest(
                    task_id=reply.task_id, lease_id=a.lease_id, worker_id=a.worker_id, ok=True, epoch=a.epoch,
                    deltas=deltas, finish_reason="stop", usage=common_pb2.Usage(prompt_tokens=5, completion_tokens=2)))
            return elapsed

        misses = [await admit_and_finish(f"miss {i}", []) for i in range(samples)]
        await admit_and_finish("the cached one", ["Hello", " there"])
        hits = [await admit_and_finish("the cached one", []) for _ in range(samples)]
    return {name: (statistics.median(v) * 1000, pct(v, 99) * 1000) for name, v in (("hit", hits), ("miss", misses))}


def served_model(node, timeout: float = 30) -> str:
    """The model id, once the leader has health-checked the worker."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = httpx.get(f"{node.base_url}/v1/models", timeout=30,
                         headers={"Authorization": f"Bearer {node.api_key()}"}).json().get("data")
        if data:
            return data[0]["id"]
        time.sleep(0.2)
    raise RuntimeError("no model served")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis").start()
        try:
            print("leader failover (default TTL 10s):", flush=True)
            kills, handovers = failover(workdir / "failover", server.url)
            queue = asyncio.run(queue_throughput(server.url))
            cluster = Cluster(workdir / "admit", server.url, workdir / "models")
            worker = cluster.sim_worker("w0", concurrency=64)
            node = cluster.coordinator("c0", [worker], gateway=True)
            cluster.start(worker, node)
            try:
                model = served_model(node)
                admit = asyncio.run(admit_latency(node, cluster.key_file, model))
            finally:
                cluster.stop()
        finally:
            server.stop()
    print()
    print(f"{'measure':<44}{'p50':>10}{'p99 / max':>12}")
    print(f"{f'failover after kill -9 ({KILLS} kills)':<44}{statistics.median(kills):>9.2f}s{max(kills):>11.2f}s (max)")
    print(f"{f'graceful hand-over ({HANDOVERS} SIGTERMs)':<44}{statistics.median(handovers):>9.2f}s{max(handovers):>11.2f}s (max)")
    for clients, (rate, p99) in queue.items():
        print(f"{f'queue claim+ack, {clients} client(s): {rate:,.0f}/s':<44}{'':>10}{p99:>10.2f}ms")
    for name, (p50, p99) in admit.items():
        print(f"{f'Admit on a cache {name}':<44}{p50:>8.2f}ms{p99:>10.2f}ms")


if __name__ == "__main__":
    main()

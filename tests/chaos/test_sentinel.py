"""Redis Sentinel: a real master, two replicas and three Sentinels (tests/sentinel_harness.py).

- the fencing epoch never goes backwards across a failover: the leader's acquisition waits for the
  replica (WAIT), so the promoted master holds it and the next leader's epoch is above it;
- with the replicas unreachable nobody can lead or admit (the write would not survive a failover),
  and the error says so;
- a cluster of real daemons configured with `[redis] sentinels` keeps serving through kill -9 of
  the master, with no accepted request lost or run twice, and its prompt cache (no redis_url of
  its own) lives on the master the Sentinels name: a repeated request is a hit, its entry there.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import httpx
import pytest

from chaos_records import keep
from cynode.config.sections import RedisSection
from cynode.errors import UnavailableError
from cynode.redis_tls import open_redis
from cynode.roles.coordinator.leader import LeaderElection
from cynode.roles.coordinator.task_queue import FencedError, TaskQueue
from runner import ChaosCluster
from scenarios import assert_invariants, references, run
from sentinel_harness import MASTER_NAME, SentinelGroup
from verdict import Fault


@pytest.fixture
def group(tmp_path):
    sentinels = SentinelGroup(tmp_path / "sentinel").start()
    yield sentinels
    sentinels.stop()


def _section(group: SentinelGroup, **changes) -> RedisSection:
    return RedisSection(sentinels=group.sentinels, master_name=MASTER_NAME, **changes)


async def _leading(election: LeaderElection, timeout: float = 15) -> int:
    async with asyncio.timeout(timeout):
        while not election.is_leader:
            await asyncio.sleep(0.05)
    return election.epoch


@pytest.mark.timeout(120)
async def test_the_fencing_epoch_survives_a_sentinel_failover(group):
    cluster = f"s-{time.time_ns()}"
    first, second = open_redis(_section(group), cluster), open_redis(_section(group), cluster)
    await first.connect()
    await second.connect()
    a = LeaderElection(first, node_id="a", boot_id="1", address="a:1", ttl=2.0)
    running = asyncio.create_task(a.run())
    try:
        epoch = await _leading(a)
        old_queue = TaskQueue(first, lambda: epoch, max_size=100, max_retries=1)
        await old_queue.enqueue("before", "m")  # acknowledged: on the replica as well (WAIT)
        await asyncio.to_thread(group.kill_master)
        await asyncio.to_thread(group.wait_failover)
        running.cancel()  # the old leader is gone with its master; a new node leads on the new one
        b = LeaderElection(second, node_id="b", boot_id="2", address="b:1", ttl=2.0)
        running = asyncio.create_task(b.run())
        new_epoch = await _leading(b, timeout=30)
        assert new_epoch > epoch, f"epoch went backwards across the failover: {epoch} then {new_epoch}"
        with pytest.raises(FencedError):  # the deposed leader's epoch is refused on the new master
            await TaskQueue(second, lambda: epoch, max_size=100, max_retries=1).enqueue("late", "m")
        assert "before" in await TaskQueue(second, lambda: new_epoch, max_size=100, max_retries=1).pending()
    finally:
        running.cancel()
        await first.close()
        await second.close()


@pytest.mark.timeout(120)
async def test_with_its_replicas_unreachable_nobody_takes_the_lead_and_nothing_is_admitted(group, caplog):
    caplog.set_level(logging.DEBUG, logger="cynode.roles.coordinator.leader")
    conn = open_redis(_section(group, wait_timeout="200ms"), f"r-{time.time_ns()}")
    await conn.connect()
    a = LeaderElection(conn, node_id="a", boot_id="1", address="a:1", ttl=2.0)
    running = [asyncio.create_task(a.run())]
    try:
        epoch = await _leading(a)
        queue = TaskQueue(conn, lambda: epoch, max_size=100, max_retries=1)
        for replica in group.replicas:
            replica.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(UnavailableError, match="wait_replicas"):
                await queue.enqueue("unsure", "m")
            await a.resign()  # the lock is free: a new acquisition would need a new epoch
            b = LeaderElection(conn, node_id="b", boot_id="2", address="b:1", ttl=2.0)
            running.append(asyncio.create_task(b.run()))
            await asyncio.sleep(3)  # many tries, each refused: the epoch would not survive a failover
            assert not b.is_leader
        finally:
            for replica in group.replicas:
                replica.proc.send_signal(signal.SIGCONT)
        assert await _leading(b) > epoch
        refused = [r for r in caplog.records if "leader lock not taken" in r.getMessage()]
        assert len(refused) > 1, "b should have tried (and been refused) more than once"
        assert [r.levelno for r in refused].count(logging.WARNING) == 1, "warn once per episode, not per try"
        assert any("replicas confirm writes again" in r.getMessage() for r in caplog.records)
    finally:
        for task in running:
            task.cancel()
        await conn.close()


@pytest.mark.timeout(300)
def test_a_cluster_on_sentinels_serves_through_kill_9_of_the_master(tmp_path, group, models_dir):
    section = {"sentinels": group.sentinels, "master_name": MASTER_NAME}
    cluster = ChaosCluster(tmp_path / "cluster", "redis://127.0.0.1:1/0", models_dir, redis_section=section,
                           redis_client=group.client)
    workers = [cluster.worker("w0"), cluster.worker("w1")]
    cluster.coordinator("c0", workers, task_queue={"lease_ttl": "4s"})
    cluster.coordinator("c1", workers, task_queue={"lease_ttl": "4s"})
    gateway = cluster.gateway("g0")
    try:
        cluster.start()
        model = cluster.model(gateway)
        cluster.wait_serving(gateway, model)
        refs = references(gateway, model)

        def kill_master() -> list[Fault]:
            fault = Fault("kill -9 Redis master (Sentinel failover)", group.kill_master())
            group.wait_failover()
            fault.healed = time.monotonic()
            return [fault]

        records, verdict, faults = run(cluster, model, refs, kill_master, rate=6.0, after=8.0, prefix="sf")
        summary = {**verdict.summary(), "promoted_after_s": round(faults[0].healed - faults[0].at, 2)}
        print("sentinel failover:", summary)
        keep("fault_sentinel_failover", {"summary": summary, "faults": [f.__dict__ for f in faults],
                                         "records": [r.as_dict() for r in records]})
        assert_invariants(verdict, allow_retries=True)
        body = {"model": model, "messages": [{"role": "user", "content": "cached through Sentinel"}],
                "max_tokens": 8, "temperature": 0}
        headers = {"Authorization": f"Bearer {gateway.api_key()}"}
        seen = [httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers, timeout=30)
                for _ in range(2)]
        assert [r.status_code for r in seen] == [200, 200], seen[-1].text
        assert [r.headers["X-Cache"] for r in seen] == ["miss", "hit"]
        with group.client() as master:  # the promoted master: the cache followed the failover
            assert master.zcard(cluster.key("cache", "lru")) >= 1
    finally:
        cluster.stop()

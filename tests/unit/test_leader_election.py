"""Leader election against a real Redis: one leader, fencing epochs, hand-over on release."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from cynode.leader_record import lock_key, read_leader
from cynode.redis_conn import RedisConnection
from cynode.roles.coordinator.leader import LeaderElection
from cynode.roles.coordinator.task_queue import FencedError, TaskQueue


async def _until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_one_of_two_candidates_leads_and_the_other_takes_over_on_release(redis_server):
    cluster = f"election-{id(object())}"
    conns = [RedisConnection(redis_server.url, cluster) for _ in range(2)]
    elections = [
        LeaderElection(c, node_id=f"n{i}", boot_id="b", address=f"127.0.0.1:{5000 + i}", ttl=0.6)
        for i, c in enumerate(conns)
    ]
    tasks = [asyncio.create_task(e.run()) for e in elections]
    try:
        await _until(lambda: any(e.is_leader for e in elections))
        # Two renewals later (the standby tried the lock meanwhile), there is still one leader.
        leading = next(e for e in elections if e.is_leader)
        for _ in range(2):
            renewed = leading._deadline
            await _until(lambda: leading._deadline > renewed)
        assert sum(e.is_leader for e in elections) == 1
        leader = next(e for e in elections if e.is_leader)
        other = next(e for e in elections if e is not leader)
        record = await read_leader(conns[0])
        assert record is not None and record.epoch == leader.epoch
        first_epoch = leader.epoch

        tasks[elections.index(leader)].cancel()
        await leader.release()
        await _until(lambda: other.is_leader)
        assert other.epoch > first_epoch
        assert (await read_leader(conns[0])).address == other._address
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for conn in conns:
            await conn.close()


async def test_a_deposed_leader_cannot_queue_or_claim_tasks(redis_server):
    conn = RedisConnection(redis_server.url, f"fence-{id(object())}")
    old = LeaderElection(conn, node_id="old", boot_id="1", address="127.0.0.1:1", ttl=0.3)
    new = LeaderElection(conn, node_id="new", boot_id="2", address="127.0.0.1:2", ttl=0.3)
    current = {"epoch": 0}
    queue = TaskQueue(conn, lambda: current["epoch"], max_size=10, max_retries=3)
    try:
        old_task = asyncio.create_task(old.run())
        await _until(lambda: old.is_leader)
        old_epoch = old.epoch
        old_task.cancel()  # the old leader stalls: it no longer renews
        with contextlib.suppress(asyncio.CancelledError):
            await old_task
        new_task = asyncio.create_task(new.run())
        await _until(lambda: new.is_leader)
        assert not old.is_leader
        current["epoch"] = old_epoch  # the old leader wakes up and writes with its epoch
        with pytest.raises(FencedError):
            await queue.enqueue("t", "m")
        current["epoch"] = new.epoch
        assert await queue.enqueue("t", "m") == ("t", True)
        assert await queue.claim("t", "w", "lease", 10) == 1
        new_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await new_task
    finally:
        await conn.close()


async def test_resign_hands_the_lock_over_within_the_standby_poll_and_stops_competing(redis_server):
    cluster = f"resign-{id(object())}"
    conns = [RedisConnection(redis_server.url, cluster) for _ in range(2)]
    # A long TTL: the standby can only lead soon if the lock was released.
    elections = [LeaderElection(c, node_id=f"n{i}", boot_id="b", address=f"a{i}", ttl=30.0) for i, c in enumerate(conns)]
    tasks = [asyncio.create_task(elections[0].run())]
    try:
        await _until(lambda: elections[0].is_leader)
        tasks.append(asyncio.create_task(elections[1].run()))
        await asyncio.sleep(0.2)
        assert not elections[1].is_leader
        loop = asyncio.get_running_loop()
        resigned_at = loop.time()
        await elections[0].resign()
        assert not elections[0].is_leader
        await _until(lambda: elections[1].is_leader, timeout=2.0)  # half a second of polling, not 5 s
        assert elections[1].epoch > elections[0].epoch
        # The resigned candidate's loop ends and never takes the lock again.
        await asyncio.wait_for(tasks[0], 5)
        await elections[1].resign()
        await asyncio.sleep(0.3)
        assert (await read_leader(conns[0])) is None
        print(f"hand-over after resign: {loop.time() - resigned_at:.2f}s")
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for conn in conns:
            await conn.close()


def on_a_fake_clock(redis_server, cluster: str, ttl: float):
    """An election whose clock moves only when the test moves `now["t"]`; the test drives `_try_lock`."""
    conn = RedisConnection(redis_server.url, f"{cluster}-{id(object())}")
    now = {"t": 0.0}
    return conn, LeaderElection(conn, node_id="n", boot_id="b", address="a", ttl=ttl, clock=lambda: now["t"]), now


async def lead(election: LeaderElection, now: dict) -> int:
    """Take the free lock now; its epoch."""
    await election._try_lock(False, now["t"])
    assert election.is_leader and election.epoch > 0
    return election.epoch


async def test_a_leader_that_stopped_acting_takes_its_own_lock_back_under_a_new_epoch(redis_server):
    conn, election, now = on_a_fake_clock(redis_server, "retake", ttl=30.0)
    try:
        first = await lead(election, now)
        now["t"] += 25  # a stall past our own deadline: we stop acting, but the lock (30 s) is still ours
        assert not election.is_leader
        await election._try_lock(False, now["t"])
        assert election.is_leader and election.epoch == first + 1
        other = LeaderElection(conn, node_id="m", boot_id="c", address="b", ttl=30.0)
        await other._try_lock(False, 0.0)
        assert other.epoch == 0, "someone else's lock is never taken"
    finally:
        await conn.close()


async def test_a_stall_under_two_thirds_less_a_quarter_of_the_ttl_passes_and_a_longer_one_pauses_acting(redis_server):
    # docs/chaos.md: renewals every TTL/4, acting until 2/3 TTL after a renewal started, so a stall that
    # delays the next renewal by less than 2/3 - 1/4 TTL (830 ms at 2 s) is never noticed; after a longer
    # one the leader acts on nothing until it renews, keeping its epoch while Redis still holds its lock,
    # and once the lock is gone it acquires again under a new epoch.
    conn, election, now = on_a_fake_clock(redis_server, "stall", ttl=2.0)
    try:
        epoch = await lead(election, now)
        now["t"] += 0.5 + 0.82  # the renewal due at 0.5 s runs 820 ms late
        assert election.is_leader
        await election._try_lock(True, now["t"])
        assert election.is_leader and election.epoch == epoch
        now["t"] += 0.5 + 0.84  # 840 ms late: past the deadline, the lock still held in Redis
        assert not election.is_leader
        await election._try_lock(True, now["t"])
        assert election.is_leader and election.epoch == epoch
        await conn.client.delete(lock_key(conn))  # a stall past the lock's own expiry
        now["t"] += 0.5
        await election._try_lock(True, now["t"])
        assert not election.is_leader
        await election._try_lock(False, now["t"])
        assert election.is_leader and election.epoch == epoch + 1
    finally:
        await conn.close()

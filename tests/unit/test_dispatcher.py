"""The leader's dispatcher on a real Redis: who gets a worker when, and what happens to orphans."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from cynode.leader_record import epoch_key
from cynode.redis_conn import RedisConnection
from cynode.roles.coordinator.dispatcher import Dispatcher
from cynode.roles.coordinator.pool import WorkerPool
from cynode.roles.coordinator.task_queue import TaskQueue


@pytest.fixture
async def parts(redis_server):
    conn = RedisConnection(redis_server.url, f"d-{uuid.uuid4().hex[:8]}")
    await conn.client.set(epoch_key(conn), 1)
    queue = TaskQueue(conn, lambda: 1, max_size=100, max_retries=3)
    pool = WorkerPool(channel_factory=lambda a: None, interval=1, timeout=1, max_failures=1)
    pool.add("w", "w:1", 100)
    worker = pool.workers["w"]
    worker.healthy, worker.models, worker.capacity = True, {"m": ()}, 1
    dispatcher = Dispatcher(queue, pool, lease_ttl=30, abandon_after=0.3, is_leader=lambda: True)
    task = asyncio.create_task(dispatcher.run(interval=0.05))
    yield queue, dispatcher, worker
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await conn.close()


async def test_waiting_requests_get_the_free_slot_in_priority_order(parts):
    queue, dispatcher, worker = parts
    for task_id, priority in (("low", 0), ("high", 9), ("mid", 5)):
        await queue.enqueue(task_id, "m", priority)
    waits = {t: asyncio.create_task(dispatcher.wait(t, "m", (), "", timeout=10)) for t in ("low", "high", "mid")}
    order = []
    for _ in range(3):
        done, _ = await asyncio.wait([w for w in waits.values() if not w.done()], return_when=asyncio.FIRST_COMPLETED)
        [finished] = done
        grant = finished.result()
        order.append(grant.task_id)
        assert worker.leased == 1  # one slot: nobody else gets in until this lease is released
        await queue.ack(grant.task_id, grant.lease_id)
        dispatcher.release(grant.lease_id)
    assert order == ["high", "mid", "low"]


async def test_a_task_nobody_waits_for_is_abandoned(parts):
    queue, dispatcher, _ = parts
    await queue.enqueue("orphan", "m")
    async with asyncio.timeout(5):  # abandoned after abandon_after (0.3 s) with nobody waiting
        while (await queue.get("orphan")).state != "cancelled":
            await asyncio.sleep(0.02)


async def test_losing_leadership_releases_every_waiter_with_the_reason(parts):
    queue, dispatcher, worker = parts
    worker.leased = 1  # full: the request has to wait
    await queue.enqueue("t", "m")
    waiting = asyncio.create_task(dispatcher.wait("t", "m", (), "", timeout=10))
    async with asyncio.timeout(5):
        while "t" not in dispatcher._waiters:
            await asyncio.sleep(0)
    dispatcher.step_down(RuntimeError("not the leader"))
    with pytest.raises(RuntimeError, match="not the leader"):
        await waiting

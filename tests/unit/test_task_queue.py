"""The Redis task queue, on a real Redis: order, leases, retries, dead letters, idempotency, fencing."""

from __future__ import annotations

import pytest

from cynode.leader_record import epoch_key
from cynode.roles.coordinator.task_queue import FencedError, QueueFullError, TaskQueue
from fakes import FakeClock


@pytest.fixture
async def redis(redis_conn):
    await redis_conn.client.set(epoch_key(redis_conn), 7)
    return redis_conn


def make_queue(redis, clock=None, **kw) -> TaskQueue:
    return TaskQueue(redis, lambda: 7, max_size=kw.get("max_size", 100), max_retries=kw.get("max_retries", 3),
                     clock=clock or FakeClock())


async def test_higher_priority_runs_first_and_equal_priorities_run_in_arrival_order(redis):
    queue = make_queue(redis)
    for task_id, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -3)]:
        await queue.enqueue(task_id, "m", priority)
    assert await queue.pending() == ["b", "d", "a", "c", "e"]


async def test_a_duplicate_submission_is_not_queued_twice(redis):
    queue = make_queue(redis)
    first = await queue.enqueue("t1", "m", idempotency_key="client-key-1")
    second = await queue.enqueue("t2", "m", idempotency_key="client-key-1")
    assert first == ("t1", True) and second == ("t1", False)
    assert await queue.pending() == ["t1"]


async def test_a_full_queue_refuses_new_work(redis):
    queue = make_queue(redis, max_size=2)
    await queue.enqueue("a", "m")
    await queue.enqueue("b", "m")
    with pytest.raises(QueueFullError) as full:
        await queue.enqueue("c", "m")
    assert full.value.depth == 2 and full.value.retryable


async def test_a_claimed_task_leaves_the_queue_and_an_ack_finishes_it(redis):
    queue = make_queue(redis)
    await queue.enqueue("a", "m")
    assert await queue.claim("a", "w1", "lease-1", 30) == 1
    assert await queue.pending() == [] and await queue.inflight() == ["a"]
    assert await queue.claim("a", "w2", "lease-2", 30) is None  # cannot be claimed twice
    assert await queue.ack("a", "lease-1") == ("done", "")
    assert (await queue.get("a")).state == "done"
    assert await queue.depths() == {"pending": 0, "inflight": 0, "dead": 0}


async def test_an_expired_lease_is_requeued_in_its_old_place_and_a_live_one_is_not(redis):
    clock = FakeClock()
    queue = make_queue(redis, clock)
    for task_id in ("a", "b", "c"):
        await queue.enqueue(task_id, "m")
    await queue.claim("a", "w1", "l-a", 10)
    await queue.claim("b", "w1", "l-b", 10)
    clock.now += 5
    assert await queue.extend("b", "l-b", 10)  # heartbeat keeps b alive
    clock.now += 6
    assert await queue.reap() == [("a", "queued")]
    assert await queue.pending() == ["a", "c"]
    assert (await queue.get("a")).error == "lease expired"


async def test_a_task_that_keeps_failing_goes_to_the_dead_letter_set(redis):
    queue = make_queue(redis, max_retries=3)
    await queue.enqueue("a", "m")
    outcomes = []
    for attempt in range(3):
        await queue.claim("a", "w", f"l{attempt}", 10)
        outcomes.append(await queue.fail("a", f"l{attempt}", "worker crashed"))
    assert outcomes == ["queued", "queued", "dead"]
    task = await queue.get("a")
    assert task.state == "dead" and task.attempts == 3 and task.error == "worker crashed"
    assert (await queue.depths())["dead"] == 1


async def test_a_stale_lease_cannot_finish_a_task(redis):
    queue = make_queue(redis)
    await queue.enqueue("a", "m")
    await queue.claim("a", "w", "old", 10)
    assert await queue.fail("a", "old", "x") == "queued"
    await queue.claim("a", "w", "new", 10)
    assert (await queue.ack("a", "old"))[0] == "stale"
    assert (await queue.ack("a", "new"))[0] == "done"


async def test_cancel_removes_queued_and_leased_tasks(redis):
    queue = make_queue(redis)
    await queue.enqueue("a", "m")
    await queue.enqueue("b", "m")
    await queue.claim("b", "w", "l", 10)
    assert await queue.cancel("a") and await queue.cancel("b")
    assert not await queue.cancel("a")
    assert await queue.depths() == {"pending": 0, "inflight": 0, "dead": 0}
    assert (await queue.get("b")).state == "cancelled"


async def test_a_deposed_leader_cannot_touch_the_queue(redis):
    queue = make_queue(redis)
    await queue.enqueue("a", "m")
    await redis.client.incr(epoch_key(redis))  # another node became leader
    with pytest.raises(FencedError):
        await queue.enqueue("b", "m")
    with pytest.raises(FencedError):
        await queue.claim("a", "w", "l", 10)
    assert await queue.pending() == ["a"]

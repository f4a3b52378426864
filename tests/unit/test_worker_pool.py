"""Picking workers: smooth weighted round-robin over healthy workers that serve the model."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from fakes import FakeClock
from cynode.roles.coordinator.pool import QUICK_EVERY_S, WorkerPool
from cynode.rpc import common_pb2, worker_pb2


def pool_with(*workers: tuple[str, int, bool, tuple[str, ...]]) -> WorkerPool:
    pool = WorkerPool(channel_factory=lambda address: None, interval=1, timeout=1, max_failures=3)
    for worker_id, weight, healthy, models in workers:
        pool.add(worker_id, f"{worker_id}:1", weight)
        state = pool.workers[worker_id]
        state.healthy, state.models, state.capacity = healthy, {m: (f"{m}-alias",) for m in models}, 8
    return pool


def test_assignments_follow_the_configured_weights():
    pool = pool_with(("a", 300, True, ("m",)), ("b", 100, True, ("m",)))
    picks = Counter(pool.pick("m")[0].id for _ in range(400))
    assert picks == {"a": 300, "b": 100}


def test_an_unhealthy_worker_gets_nothing():
    pool = pool_with(("a", 100, True, ("m",)), ("b", 100, False, ("m",)))
    assert {pool.pick("m")[0].id for _ in range(20)} == {"a"}


def test_only_workers_serving_the_model_are_picked_and_aliases_resolve():
    pool = pool_with(("a", 100, True, ("m",)), ("b", 100, True, ("other",)))
    worker, model_id = pool.pick("m-alias")
    assert (worker.id, model_id) == ("a", "m")
    assert pool.pick("nothing") is None


def test_excluded_workers_are_skipped():
    pool = pool_with(("a", 100, True, ("m",)), ("b", 100, True, ("m",)))
    assert {pool.pick("m", exclude=["a"])[0].id for _ in range(10)} == {"b"}


def test_a_busy_worker_gets_a_smaller_share():
    pool = pool_with(("a", 100, True, ("m",)), ("b", 100, True, ("m",)))
    pool.workers["a"].active = 8  # full
    picks = Counter(pool.pick("m")[0].id for _ in range(110))
    assert picks["b"] > 5 * picks["a"] > 0




def test_a_worker_whose_breaker_tripped_gets_nothing_until_a_probe_succeeds():
    from cynode.roles.coordinator.breaker import BreakerSettings

    clock = FakeClock(0.0)
    pool = WorkerPool(channel_factory=lambda a: None, interval=1, timeout=1, max_failures=3,
                      breaker=BreakerSettings(min_requests=3, failure_rate=0.5, open_for=10), clock=clock)
    for worker_id in ("a", "b"):
        pool.add(worker_id, f"{worker_id}:1", 100)
        state = pool.workers[worker_id]
        state.healthy, state.models, state.capacity = True, {"m": ()}, 8
    for _ in range(3):
        pool.workers["a"].breaker.record(False)
    assert {pool.pick("m")[0].id for _ in range(20)} == {"b"}
    clock.now = 10
    picks = [pool.pick("m")[0].id for _ in range(20)]
    assert picks.count("a") == 1  # one half-open probe
    pool.workers["a"].breaker.record(True)
    assert "a" in {pool.pick("m")[0].id for _ in range(4)}


def test_a_worker_with_no_free_slot_gets_nothing():
    pool = pool_with(("a", 100, True, ("m",)), ("b", 100, True, ("m",)))
    pool.workers["a"].leased = 8
    assert {pool.pick("m")[0].id for _ in range(10)} == {"b"}
    pool.workers["b"].leased = 8
    assert pool.pick("m") is None


def test_the_same_prompt_prefix_goes_to_the_same_worker_unless_it_is_much_busier():
    pool = pool_with(("a", 100, True, ("m",)), ("b", 100, True, ("m",)), ("c", 100, True, ("m",)))
    first = pool.pick("m", prefix="system: you are a pirate")[0].id
    assert {pool.pick("m", prefix="system: you are a pirate")[0].id for _ in range(10)} == {first}
    pool.workers[first].active = 7  # 7/8 busy while the others idle: fall back to round-robin
    assert first not in {pool.pick("m", prefix="system: you are a pirate")[0].id for _ in range(4)}


class CountingChannel:
    """A channel whose every Health call answers ready at once and is counted (with when)."""

    def __init__(self) -> None:
        self.checks: list[float] = []

    def unary_unary(self, method, request_serializer=None, response_deserializer=None, **_):
        async def call(request, timeout=None):
            self.checks.append(asyncio.get_running_loop().time())
            return worker_pb2.HealthReply(ready=True, max_concurrency=4, models=[common_pb2.ModelInfo(id="m")])
        return call

    unary_stream = unary_unary


async def wait_until(predicate, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_a_quickened_pool_checks_every_half_second_then_goes_back_to_its_interval():
    channel = CountingChannel()
    pool = WorkerPool(channel_factory=lambda address: channel, interval=60, timeout=1, max_failures=1)
    pool.add("w1", "w1:1", 100)
    runner = asyncio.create_task(pool.run())
    try:
        await wait_until(lambda: len(channel.checks) == 1, 5)  # the first round; the next is a minute away
        pool.quicken(1.2)  # an adapter was published: routing should follow within a fraction of a second
        await wait_until(lambda: len(channel.checks) >= 3, 5)
        assert channel.checks[2] - channel.checks[1] == pytest.approx(QUICK_EVERY_S, abs=0.2)
        await asyncio.sleep(1.5)  # past the quick window: back to the minute
        settled = len(channel.checks)
        await asyncio.sleep(0.8)
        assert len(channel.checks) == settled
    finally:
        runner.cancel()


@pytest.mark.asyncio
async def test_a_changed_models_revision_checks_that_worker_once_at_once():
    channel = CountingChannel()
    pool = WorkerPool(channel_factory=lambda address: channel, interval=60, timeout=1, max_failures=1)
    pool.add("w1", "w1:1", 100)
    pool.models_changed("w1", "rev-1")
    await wait_until(lambda: pool.workers["w1"].models_rev == "rev-1", 5)
    assert len(channel.checks) == 1 and pool.workers["w1"].serves("m")
    await wait_until(lambda: len(pool._background) == 0, 5)
    pool.models_changed("w1", "rev-1")  # the same revision again (gossip repeats itself): nothing to do
    pool.models_changed("nobody", "rev-9")
    assert len(pool._background) == 0 and len(channel.checks) == 1  # no check was started

"""The fine-tuning records in a real Redis: status changes are fenced by the leader's epoch and by
the worker's attempt, the queue orders by priority then age, and control actions follow the status."""

from __future__ import annotations

import time

from cynode.training_store import TrainingStore, queue_score

async def _job(store: TrainingStore, job_id: str, priority: int = 0, created_at: float | None = None) -> None:
    await store.create_job({"id": job_id, "model": "m", "training_file": "file-x", "created_at": created_at or time.time(),
                            "priority": priority, "hyperparameters": {}, "method": {"type": "supervised"}})

async def _lead(store: TrainingStore, epoch: int) -> None:
    await store.r.set(store.redis.key("leader", "epoch"), epoch)

async def test_validation_and_assignment_need_the_current_epoch(redis_conn):
    store = TrainingStore(redis_conn)
    await _lead(store, 3)
    await _job(store, "j1")
    assert await store.mark_validated("j1", epoch=2) == -1  # an old leader
    assert (await store.job("j1"))["status"] == "validating_files"
    assert await store.mark_validated("j1", epoch=3) == 1
    assert (await store.job("j1"))["status"] == "queued" and await store.validating() == []
    assert await store.assign("j1", "w0", epoch=2) == -1
    assert await store.assign("j1", "w0", epoch=3) == 1
    job = await store.job("j1")
    assert (job["status"], job["worker"], job["attempt"]) == ("running", "w0", "1")
    assert await store.assign("j1", "w1", epoch=3) == 0  # no longer queued: nobody else gets it
    assert await store.take_assignment("w0", timeout=1) == ("j1", 1)

async def test_a_failed_validation_keeps_the_error(redis_conn):
    store = TrainingStore(redis_conn)
    await _lead(store, 1)
    await _job(store, "j1")
    error = {"code": "invalid_training_file", "message": "t.jsonl: row 2: ...", "param": "training_file", "row": 2}
    assert await store.mark_validated("j1", 1, error=error) == 1
    job = await store.job("j1")
    assert job["status"] == "failed" and job["error"] == error and job["finished_at"]
    assert await store.queued() == []

async def test_the_queue_orders_by_priority_then_age(redis_conn):
    store = TrainingStore(redis_conn)
    await _lead(store, 1)
    now = time.time()
    for job_id, priority, age in (("old-low", 0, 30), ("new-high", 5, 1), ("old-high", 5, 20), ("new-low", 0, 2)):
        await _job(store, job_id, priority, now - age)
        await store.mark_validated(job_id, 1)
    assert await store.queued() == ["old-high", "new-high", "old-low", "new-low"]
    assert queue_score(1, now) < queue_score(0, now)

async def test_only_the_current_attempt_may_write_and_an_orphan_is_requeued(redis_conn):
    store = TrainingStore(redis_conn)
    await _lead(store, 1)
    await _job(store, "j1")
    await store.mark_validated("j1", 1)
    await store.assign("j1", "w0", 1)
    assert await store.update_owned("j1", "w0:1", trained_tokens=10)
    assert await store.requeue_if_orphaned("j1", 1) == 0  # the lease is alive
    await store.r.delete(store.k("job", "j1", "lease"))  # what a killed worker leaves: no renewals
    assert await store.requeue_if_orphaned("j1", 1) == 1
    assert (await store.job("j1"))["status"] == "queued"
    assert await store.assign("j1", "w1", 1) == 2
    assert not await store.update_owned("j1", "w0:1", trained_tokens=99)  # the old attempt is fenced out
    assert not await store.renew("j1", "w0:1")
    assert await store.update_owned("j1", "w1:2", end="succeeded", fine_tuned_model="m:ft-x")
    job = await store.job("j1")
    assert (job["status"], job["trained_tokens"], job["fine_tuned_model"]) == ("succeeded", "10", "m:ft-x")
    assert await store.running() == []

async def test_cancel_pause_resume_follow_the_status(redis_conn):
    store = TrainingStore(redis_conn)
    await _lead(store, 1)
    await _job(store, "j1")
    await store.mark_validated("j1", 1)
    assert await store.control("j1", "resume") == ("queued", "")
    assert await store.control("j1", "pause") == ("queued", "paused")
    assert await store.queued() == []
    assert await store.control("j1", "resume") == ("paused", "queued")
    await store.assign("j1", "w0", 1)
    assert await store.control("j1", "pause") == ("running", "asked")
    assert (await store.job("j1"))["control"] == "pause"
    assert await store.control("j1", "resume") == ("running", "unpaused")
    assert await store.control("j1", "cancel") == ("running", "asked")
    await store.update_owned("j1", "w0:1", end="cancelled")
    assert await store.control("j1", "cancel") == ("cancelled", "")

async def test_events_are_numbered_in_order(redis_conn):
    store = TrainingStore(redis_conn)
    await _job(store, "j1")
    for i in range(3):
        await store.add_event("j1", f"e{i}", data={"step": i})
    events = await store.events("j1")
    assert [e["id"] for e in events] == ["ftevent-j1-1", "ftevent-j1-2", "ftevent-j1-3"]
    assert [e["data"]["step"] for e in events] == [0, 1, 2]
    assert [e["message"] for e in await store.events("j1", 2)] == ["e2"]

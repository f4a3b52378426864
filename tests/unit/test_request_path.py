"""The request path, gateway → coordinator → worker, with the real services on the sim engine.

Each test runs over real loopback gRPC and, where a dead process is not the point, again over the
in-process channels a single node uses, which must behave the same. The sim engine's time is
stepped by the test, so "after two tokens" means exactly two tokens.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from cynode.errors import FencedError, QueueFullError, RequestError, TaskEndedError, UnavailableError
from cynode.rpc import common_pb2, coordinator_pb2, worker_pb2
from cynode.rpc.errors import PeerUnavailable, rpc_errors
from cynode.engines.sim_engine import WORDS
from fakes import wait_until
from request_path import RequestPath

TRANSPORTS = ["grpc", "local"]


def answer(tokens: int) -> str:
    return "".join(WORDS[i % len(WORDS)] for i in range(tokens))


@pytest.fixture(params=TRANSPORTS)
async def path(request, redis_conn):
    started = await RequestPath.start(redis_conn, transport=request.param)
    yield started
    await started.stop()


@pytest.fixture
async def grpc_path(redis_conn):
    started = await RequestPath.start(redis_conn, transport="grpc")
    yield started
    await started.stop()


async def task_of(path: RequestPath, idempotency_key: str):
    from cynode.roles.coordinator.service import _task_id

    return await path.queue.get(_task_id(idempotency_key))


async def test_a_request_streams_through_the_real_services_and_its_task_is_done_once(path):
    completion = path.completion("hello", max_tokens=8, idempotency_key="k-basic")
    assert await path.collect(completion) == answer(8)
    assert (completion.finish_reason, completion.completion_tokens, completion.migrations) == ("length", 8, 0)
    await path.settled()
    task = await task_of(path, "k-basic")
    assert (task.state, task.attempts) == ("done", 1)
    assert await path.queue.depths() == {"pending": 0, "inflight": 0, "dead": 0}


async def test_a_worker_that_dies_before_the_first_token_is_retried_on_another(grpc_path):
    path = grpc_path
    completion = path.completion("retry me", max_tokens=6, idempotency_key="k-retry")
    pieces = completion.deltas()
    first = asyncio.ensure_future(anext(pieces))
    # Running and asleep until its next token: an advance before the engine reads the clock would be lost.
    await wait_until(lambda: any(w.engine.active_requests for w in path.workers.values()) and path.clock.sleeping,
                     what="a running stream waiting for its next token")
    dead = path.streaming_worker()
    await path.kill(dead)  # no token is out yet: the sim's first token is 0.1 s of stepped time away
    path.clock.run_free()
    text = await first + "".join([p async for p in pieces])
    assert text == answer(6) and completion.migrations == 0
    await path.settled()
    task = await task_of(path, "k-retry")
    assert (task.state, task.attempts) == ("done", 2) and task.worker != dead.id
    assert path.pool.workers[dead.id].breaker._outcomes[-1][1] is False  # the dead worker was blamed


async def test_a_worker_that_dies_mid_stream_is_migrated_and_the_text_is_unbroken(grpc_path):
    path = grpc_path
    completion = path.completion("migrate me", max_tokens=10, idempotency_key="k-migrate")
    received: list[str] = []

    async def consume():
        async for piece in completion.deltas():
            received.append(piece)

    consumer = asyncio.ensure_future(consume())
    # Running and asleep until its next token: an advance before the engine reads the clock would be lost.
    await wait_until(lambda: any(w.engine.active_requests for w in path.workers.values()) and path.clock.sleeping,
                     what="a running stream waiting for its next token")
    dead = path.streaming_worker()
    for count in (1, 2, 3):  # three tokens out, one at a time
        path.clock.advance(0.1)
        await wait_until(lambda: len(received) == count, what=f"token {count}")
    await path.kill(dead)
    path.clock.run_free()
    await consumer
    assert "".join(received) == answer(10), "the migrated stream must continue exactly where the dead worker stopped"
    assert completion.migrations == 1 and completion.completion_tokens == 10
    await path.settled()
    task = await task_of(path, "k-migrate")
    assert (task.state, task.attempts) == ("done", 2) and task.worker != dead.id


async def test_admitting_again_with_the_same_idempotency_key_gets_the_same_task_and_lease(path):
    stub = path.coordinator_stub()
    request = coordinator_pb2.AdmitRequest(request_id="r1", model="sim", idempotency_key="k-twice",
                                           cache_mode=coordinator_pb2.CACHE_NO_CACHE,
                                           messages=[common_pb2.ChatMessage(role="user", content="hi")])
    first = await stub.Admit(request, timeout=5)
    again = await stub.Admit(request, timeout=5)  # the answer to the first was lost on the way, say
    assert again.task_id == first.task_id
    assert again.assignment.lease_id == first.assignment.lease_id
    assert again.assignment.worker_id == first.assignment.worker_id
    assert await path.queue.depths() == {"pending": 0, "inflight": 1, "dead": 0}


async def test_a_worker_refuses_an_older_leaders_assignment_and_is_not_blamed_for_it(path):
    stub = path.coordinator_stub()
    stale = await stub.Admit(coordinator_pb2.AdmitRequest(
        request_id="r-stale", model="sim", idempotency_key="k-stale", cache_mode=coordinator_pb2.CACHE_NO_CACHE,
        messages=[common_pb2.ChatMessage(role="user", content="hi")]), timeout=5)
    await path.bump_epoch()
    fresh = path.completion("after the failover", max_tokens=3)
    assert await path.collect(fresh) == answer(3)  # every worker it reaches learns the new epoch
    worker = path.workers[stale.assignment.worker_id]
    worker.service.highest_epoch = path.election.epoch  # (whichever worker served it, this one knows too)
    call = path.upstream.worker(stale.assignment.worker_address).Predict(worker_pb2.PredictRequest(
        request_id="r-stale", model="sim", lease_id=stale.assignment.lease_id, epoch=stale.assignment.epoch,
        messages=[common_pb2.ChatMessage(role="user", content="hi")]), timeout=5)
    with pytest.raises(FencedError, match="stale assignment"):
        with rpc_errors("worker"):
            await call.read()
    breaker = path.pool.workers[worker.id].breaker
    outcomes = list(breaker._outcomes)

    # Through the gateway's Completion: every attempt meets a stale epoch; no worker is blamed.
    for w in path.workers.values():
        w.service.highest_epoch = path.election.epoch + 100
    refused = path.completion("fenced", max_tokens=3, max_attempts=2)
    with pytest.raises(UnavailableError, match="failed on every worker"):
        await path.collect(refused)
    assert list(breaker._outcomes) == outcomes and breaker.state == "closed"


async def test_a_too_long_prompt_reaches_the_client_as_a_400_with_its_code_and_param(path):
    completion = path.completion("word " * 80, max_tokens=4, idempotency_key="k-long")  # the sim's context is 64
    with pytest.raises(RequestError) as refused:
        await path.collect(completion)
    assert refused.value.status == 400
    assert (refused.value.param, refused.value.code) == ("messages", "context_length_exceeded")
    await path.settled()
    assert (await task_of(path, "k-long")).state == "cancelled"  # not requeued for another worker to refuse
    assert all(not w.breaker._outcomes for w in path.pool.workers.values())


async def test_an_unknown_model_is_a_404_naming_the_model(path):
    with pytest.raises(RequestError) as refused:
        await path.collect(path.completion("hi", model="no-such-model"))
    assert (refused.value.status, refused.value.param, refused.value.code) == (404, "model", "model_not_found")


async def test_a_full_queue_is_a_429_with_retry_after(redis_conn):
    path = await RequestPath.start(redis_conn, workers=1, worker_capacity=1, max_size=1)
    try:
        async def run(completion):
            return "".join([piece async for piece in completion.deltas()])

        busy = [asyncio.ensure_future(run(path.completion(f"q{i}", max_tokens=4))) for i in range(2)]
        await wait_until(lambda: path.dispatcher.pending == 1, what="one queued task")
        with pytest.raises(QueueFullError) as full:
            await path.collect(path.completion("one too many", max_tokens=4))
        assert full.value.status == 429 and full.value.retry_after >= 1 and full.value.depth == 1
        assert await asyncio.gather(*busy) == [answer(4), answer(4)]
    finally:
        await path.stop()


async def test_a_client_that_goes_away_cancels_its_task_once_and_frees_the_slot(path):
    completion = path.completion("leave early", max_tokens=10, idempotency_key="k-gone")
    pieces = completion.deltas()
    first = asyncio.ensure_future(anext(pieces))
    # Running and asleep until its next token: an advance before the engine reads the clock would be lost.
    await wait_until(lambda: any(w.engine.active_requests for w in path.workers.values()) and path.clock.sleeping,
                     what="a running stream waiting for its next token")
    worker = path.streaming_worker()
    path.clock.advance(0.1)
    await first
    await pieces.aclose()  # the HTTP client disconnected
    # Freed before the engine's next token is due: the stepped clock has not moved.
    await wait_until(lambda: worker.engine.active_requests == 0, what="the slot to be freed")
    await path.settled()
    assert (await task_of(path, "k-gone")).state == "cancelled"
    assert path.requests("cancelled") == 1 and path.requests("failed") == 0


async def test_a_cached_answer_needs_no_worker(path):
    from cynode.rpc.coordinator_pb2 import CACHE_DEFAULT

    first = path.completion("cache me", max_tokens=5, cache_mode=CACHE_DEFAULT)
    text = await path.collect(first)
    await path.settled()
    for w in list(path.workers.values()):
        await path.kill(w)
    again = path.completion("cache me", max_tokens=5, cache_mode=CACHE_DEFAULT)
    assert await path.collect(again) == text and again.cached
    assert (again.completion_tokens, again.finish_reason) == (5, "length")


async def test_a_stopped_in_process_server_refuses_new_calls_as_a_stopped_server_does(redis_conn):
    path = await RequestPath.start(redis_conn, workers=1, transport="local")
    try:
        worker = next(iter(path.workers.values()))
        await worker.server.stop(None)
        call = path.upstream.worker(worker.address).Predict(worker_pb2.PredictRequest(model="sim"), timeout=5)
        with pytest.raises(PeerUnavailable):
            with rpc_errors("worker"):
                await call.read()
    finally:
        with contextlib.suppress(Exception):
            await path.stop()


def test_every_cynode_error_survives_the_trip_through_grpc_status_and_back():
    import grpc
    import grpc.aio

    from cynode.rpc.errors import error_metadata, from_rpc_error, grpc_code

    for error in (RequestError("too long", param="messages", code="context_length_exceeded"),
                  RequestError("no such model", status=404, param="model", code="model_not_found"),
                  QueueFullError(7, retry_after=3), FencedError("not the leader"), TaskEndedError("task t is done"),
                  UnavailableError("Redis down", retry_after=1)):
        rpc = grpc.aio.AioRpcError(grpc_code(error), grpc.aio.Metadata(), grpc.aio.Metadata(*error_metadata(error)),
                                   error.message)
        back = from_rpc_error(rpc)
        assert type(back) is type(error)
        assert (back.message, back.status, back.code, back.param, back.retryable) == (
            error.message, error.status, error.code, error.param, error.retryable)
        assert getattr(back, "retry_after", None) == getattr(error, "retry_after", None)
    lost = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection refused")
    assert isinstance(from_rpc_error(lost), PeerUnavailable)


async def test_a_stream_past_its_deadline_fails_as_deadline_exceeded_and_frees_the_slot(path):
    worker = next(iter(path.workers.values()))
    call = path.upstream.worker(worker.address).Predict(worker_pb2.PredictRequest(
        request_id="r-deadline", model="sim", epoch=path.election.epoch,
        messages=[common_pb2.ChatMessage(role="user", content="hi")]), timeout=0.3)
    with pytest.raises(PeerUnavailable, match="deadline_exceeded"):
        with rpc_errors("worker"):
            await call.read()  # the stepped clock never reaches the first token
    await wait_until(lambda: worker.engine.active_requests == 0, what="the slot to be freed")

"""The coordinator's gRPC service: control only (Admit, Heartbeat, Complete, ...); no tokens pass here.

Handlers raise cynode errors; `cynode.rpc.errors` turns them into the call's status. A request
costs the leader one Redis round trip to admit (cache lookup, idempotency, queueing and, when a
worker is free, the lease: one script) and one to complete (ack and cache fill: one script).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque

from cynode.errors import FencedError, QueueFullError, RequestError, TaskEndedError, UnavailableError
from cynode.leader_record import read_leader
from cynode.redis_conn import RedisConnection
from cynode.rpc import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from cynode.rpc.callers import ANY_MEMBER
from cynode.rpc.convert import messages_from_pb, sampling_from_pb

from .dispatcher import Dispatcher, Grant
from .leader import LeaderElection
from .metrics import CoordinatorMetrics
from .pool import WorkerPool
from .prompt_cache import CachedResponse, PromptCache, cache_key
from .task_queue import TaskQueue

log = logging.getLogger(__name__)

DEFAULT_ADMIT_WAIT_S = 600.0


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    # The roles a caller's certificate must name, per method (cynode.rpc.callers).
    CALLERS = {
        "Admit": frozenset({"gateway"}),
        "Heartbeat": frozenset({"gateway"}),
        "Complete": frozenset({"gateway"}),
        "Cancel": frozenset({"gateway"}),
        "ListModels": ANY_MEMBER,
        "Status": ANY_MEMBER,
    }

    def __init__(self, *, redis: RedisConnection, election: LeaderElection, pool: WorkerPool, queue: TaskQueue, dispatcher: Dispatcher,
                 cache: PromptCache | None, cache_nondeterministic: bool, metrics: CoordinatorMetrics) -> None:
        self._redis = redis
        self._election = election
        self._pool = pool
        self._queue = queue
        self._dispatcher = dispatcher
        self._cache = cache
        self._cache_nondeterministic = cache_nondeterministic
        self._metrics = metrics
        self._drain = _DrainRate()
        self._requests = {outcome: metrics.requests.labels(outcome) for outcome in (
            "assigned", "cache_hit", "completed", "failed", "cancelled", "model_not_found", "queue_full")}

    def _require_leader(self) -> None:
        if not self._election.is_leader:
            raise FencedError("not the leader")

    async def Admit(self, request: coordinator_pb2.AdmitRequest, context) -> coordinator_pb2.AdmitReply:
        self._require_leader()
        resolved = self._pool.resolve(request.model)
        if resolved is None:
            self._requests["model_not_found"].inc()
            raise RequestError(f"The model `{request.model}` does not exist or you do not have access to it.",
                               status=404, param="model", code="model_not_found")
        model_id, version = resolved
        key = self._cache_key(request, model_id, version)
        look_up = bool(key) and request.cache_mode == coordinator_pb2.CACHE_DEFAULT
        if look_up and not self._queue.serves_cache:
            hit = await self._cache.get(key)
            if hit is not None:
                return self._cached(hit)
        idem = request.idempotency_key or request.request_id
        task_id = _task_id(idem)
        reservation = self._dispatcher.reserve(model_id, tuple(request.exclude_workers), _prefix(request))
        try:
            admission = await self._queue.admit(
                task_id, model_id, request.priority, idempotency_key=idem, cache_key=key or "",
                look_up_cache=look_up, worker=reservation.worker.id if reservation else "",
                lease=reservation.lease_id if reservation else "", lease_ttl=self._dispatcher.lease_ttl,
            )
        except QueueFullError as exc:
            self._dispatcher.unreserve(reservation)
            self._requests["queue_full"].inc()
            raise QueueFullError(exc.depth, retry_after=self._drain.retry_after(exc.depth)) from None
        except BaseException:
            self._dispatcher.unreserve(reservation)
            raise
        if admission.outcome == "leased":
            grant = self._dispatcher.confirm(reservation, admission.task_id)
            self._requests["assigned"].inc()
            return coordinator_pb2.AdmitReply(task_id=grant.task_id, assignment=self._assignment(grant, key))
        self._dispatcher.unreserve(reservation)
        if admission.outcome == "cached":
            hit = self._cache.counted(admission.cached)
            return self._cached(hit)
        if look_up and self._queue.serves_cache:
            self._cache.counted(None)
        if admission.outcome == "duplicate":
            again = await self._again(admission.task_id, model_id, key)
            if again is not None:
                return again
        return await self._wait(request, context, admission.task_id, model_id, key)

    def _cached(self, hit: CachedResponse) -> coordinator_pb2.AdmitReply:
        self._metrics.cache_hit_rate.set(self._cache.hit_rate)
        self._requests["cache_hit"].inc()
        return coordinator_pb2.AdmitReply(cached=coordinator_pb2.CachedResponse(
            deltas=hit.deltas, finish_reason=hit.finish_reason, model=hit.model,
            usage=common_pb2.Usage(prompt_tokens=hit.prompt_tokens, completion_tokens=hit.completion_tokens),
        ))

    async def _again(self, task_id: str, model_id: str, key: str | None) -> coordinator_pb2.AdmitReply | None:
        """An Admit for a task we know (a retry, or the answer to the first Admit was lost)."""
        task = await self._queue.get(task_id)
        state = task.state if task else "gone"
        if state == "leased" and task.lease in self._dispatcher.leases:
            # The answer to an earlier Admit was lost on the way: give the same assignment again.
            worker = self._pool.workers[task.worker]
            grant = Grant(task_id, worker, model_id, task.lease, task.attempts, self._dispatcher.lease_deadline_ms())
            return coordinator_pb2.AdmitReply(task_id=task_id, assignment=self._assignment(grant, key))
        if state in ("dead", "cancelled", "done", "gone"):
            raise TaskEndedError(f"task {task_id} is {state}" + (f": {task.error}" if task and task.error else ""),
                                 retry_after=1)
        return None

    async def _wait(self, request, context, task_id: str, model_id: str, key: str | None) -> coordinator_pb2.AdmitReply:
        started = time.monotonic()
        remaining = context.time_remaining()
        timeout = remaining if remaining is not None else DEFAULT_ADMIT_WAIT_S
        try:
            grant = await self._dispatcher.wait(task_id, model_id, tuple(request.exclude_workers), _prefix(request), timeout)
        except TimeoutError:
            raise UnavailableError("no worker became free in time", retry_after=2, code="timeout") from None
        self._metrics.queue_wait.observe(time.monotonic() - started)
        self._requests["assigned"].inc()
        return coordinator_pb2.AdmitReply(task_id=task_id, assignment=self._assignment(grant, key))

    def _assignment(self, grant: Grant, key: str | None) -> coordinator_pb2.Assignment:
        return coordinator_pb2.Assignment(
            worker_id=grant.worker.id, worker_address=grant.worker.address, lease_id=grant.lease_id,
            epoch=self._election.epoch, lease_deadline_ms=grant.lease_deadline_ms, model=grant.model_id,
            attempt=grant.attempt, cacheable=bool(key),
        )

    def _cache_key(self, request: coordinator_pb2.AdmitRequest, model_id: str, version: str) -> str | None:
        if self._cache is None or request.cache_mode == coordinator_pb2.CACHE_NO_STORE:
            return None
        sampling = sampling_from_pb(request.sampling)
        if not (self._cache_nondeterministic or sampling.deterministic):
            return None
        return cache_key(model_id, version, messages_from_pb(request.messages), sampling, prompt=request.prompt,
                         tools=request.tools)

    async def Heartbeat(self, request: coordinator_pb2.HeartbeatRequest, context) -> coordinator_pb2.HeartbeatReply:
        self._require_leader()
        ok = await self._queue.extend(request.task_id, request.lease_id, self._dispatcher.lease_ttl)
        return coordinator_pb2.HeartbeatReply(ok=ok, lease_deadline_ms=self._dispatcher.lease_deadline_ms())

    async def Complete(self, request: coordinator_pb2.CompleteRequest, context) -> coordinator_pb2.CompleteReply:
        self._require_leader()
        worker_id = self._dispatcher.release(request.lease_id) or request.worker_id
        if request.ok:
            value = self._cache_entry(request)
            state, fill_key = await self._queue.ack(request.task_id, request.lease_id, value)
            self._drain.record()
            if fill_key and value:  # the cache lives on a Redis of its own
                await self._cache.put(fill_key, CachedResponse.decode(value))
        else:
            state = await self._queue.fail(request.task_id, request.lease_id, request.error or "failed")
            if state == "dead":
                log.warning("task %s dead-lettered: %s", request.task_id, request.error)
        worker = self._pool.workers.get(worker_id)
        if worker is not None and (request.ok or request.worker_fault):
            worker.breaker.record(request.ok)
        self._requests["completed" if request.ok else "failed"].inc()
        self._metrics.tokens.inc(max(request.usage.completion_tokens, 0))  # a counter cannot go down
        return coordinator_pb2.CompleteReply(task_state=state)

    def _cache_entry(self, request: coordinator_pb2.CompleteRequest) -> bytes:
        """The prompt-cache entry for a finished answer; empty when it is not to be cached."""
        if self._cache is None or not request.deltas or request.finish_reason not in ("stop", "length"):
            return b""
        return CachedResponse(
            deltas=tuple(request.deltas), finish_reason=request.finish_reason, model=request.model,
            prompt_tokens=max(request.usage.prompt_tokens, 0), completion_tokens=max(request.usage.completion_tokens, 0),
        ).encode()

    async def Cancel(self, request: coordinator_pb2.CancelRequest, context) -> coordinator_pb2.CancelReply:
        self._require_leader()
        if request.lease_id:
            self._dispatcher.release(request.lease_id)
        try:
            await self._queue.cancel(request.task_id, request.reason or "cancelled by the client")
        except (FencedError, UnavailableError) as exc:
            log.warning("cancel of %s not recorded: %s", request.task_id, exc.message)
        self._dispatcher.abandon(request.task_id, TaskEndedError(f"task {request.task_id} was cancelled"))
        self._requests["cancelled"].inc()
        return coordinator_pb2.CancelReply()

    async def ListModels(self, request, context) -> common_pb2.ListModelsReply:
        return common_pb2.ListModelsReply(models=[
            common_pb2.ModelInfo(id=model_id, aliases=aliases, context_length=context_length, version=version, loaded=True)
            for model_id, (aliases, context_length, version) in sorted(self._pool.models().items())
        ])

    async def Status(self, request, context) -> coordinator_pb2.StatusReply:
        reply = coordinator_pb2.StatusReply(is_leader=self._election.is_leader)
        leader = await read_leader(self._redis)
        depths = await self._queue.depths()
        cache_entries = await self._cache.size() if self._cache else 0
        if leader:
            reply.leader_id, reply.epoch, reply.leader_address = leader.id, leader.epoch, leader.address
        reply.queue_pending, reply.queue_inflight, reply.queue_dead = depths["pending"], depths["inflight"], depths["dead"]
        reply.cache_entries = cache_entries
        reply.cache_hit_rate = self._cache.hit_rate if self._cache else 0.0
        for w in sorted(self._pool.workers.values(), key=lambda w: w.id):
            reply.workers.append(coordinator_pb2.WorkerStatus(
                id=w.id, address=w.address, healthy=w.healthy, breaker=w.breaker.state, active=w.active,
                leased=w.leased, capacity=w.capacity, weight=w.weight, models=sorted(w.models),
            ))
        return reply


class _DrainRate:
    """Completions per second over the last minute, for an honest Retry-After: completions are
    counted per second, so recording one costs the same at 1 request/s as at 10,000."""

    def __init__(self, window: int = 60) -> None:
        self._window = window
        self._seconds: deque[list[int]] = deque()  # [second, completions in it], oldest first
        self._count = 0

    def _expire(self, now: int) -> None:
        while self._seconds and self._seconds[0][0] <= now - self._window:
            self._count -= self._seconds.popleft()[1]

    def record(self) -> None:
        now = int(time.monotonic())
        if self._seconds and self._seconds[-1][0] == now:
            self._seconds[-1][1] += 1
        else:
            self._seconds.append([now, 1])
            self._expire(now)
        self._count += 1

    def retry_after(self, depth: int) -> int:
        self._expire(int(time.monotonic()))
        rate = self._count / self._window
        return max(1, min(60, round(depth / rate))) if rate > 0 else 5


def _task_id(idempotency_key: str) -> str:
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]


def _prefix(request: coordinator_pb2.AdmitRequest) -> str:
    """What identifies a shared prompt prefix: everything before the last message, else its start
    (a raw completion prompt: its start)."""
    if not request.messages:
        return request.prompt[:2048]
    head = request.messages[:-1] or request.messages
    text = "\x1e".join(f"{m.role}\x1f{m.content}" for m in head)
    return text[:2048]

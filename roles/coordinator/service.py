"""The coordinator's gRPC service: control only (Admit, Heartbeat, Complete, ...); no tokens pass here."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time

import grpc
import grpc.aio

from cynode.errors import UnavailableError
from cynode.leader_record import read_leader
from cynode.redis_conn import RedisConnection
from cynode.rpc import common_pb2, coordinator_pb2, coordinator_pb2_grpc

from .dispatcher import Dispatcher, Grant
from .leader import LeaderElection
from .metrics import CoordinatorMetrics
from .pool import WorkerPool
from .prompt_cache import CachedResponse, PromptCache, cache_key, is_deterministic
from .task_queue import FencedError, QueueFullError, TaskQueue

log = logging.getLogger(__name__)

_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_tokens", "seed", "presence_penalty", "frequency_penalty",
                    "repetition_penalty")
DEFAULT_ADMIT_WAIT_S = 600.0


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, *, redis: RedisConnection, election: LeaderElection, pool: WorkerPool, queue: TaskQueue, dispatcher: Dispatcher,
                 cache: PromptCache | None, cache_nondeterministic: bool, lease_ttl: float, metrics: CoordinatorMetrics) -> None:
        self._redis = redis
        self._election = election
        self._pool = pool
        self._queue = queue
        self._dispatcher = dispatcher
        self._cache = cache
        self._cache_nondeterministic = cache_nondeterministic
        self._lease_ttl = lease_ttl
        self._metrics = metrics
        self._drain = _DrainRate()

    async def _require_leader(self, context: grpc.aio.ServicerContext) -> None:
        if not self._election.is_leader:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the leader")

    async def Admit(self, request: coordinator_pb2.AdmitRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.AdmitReply:
        await self._require_leader(context)
        resolved = self._pool.resolve(request.model)
        if resolved is None:
            self._metrics.requests.labels("model_not_found").inc()
            await context.abort(grpc.StatusCode.NOT_FOUND, f"The model `{request.model}` does not exist")
        model_id, version = resolved
        try:
            key = self._cache_key(request, model_id, version)
            if key and self._cache is not None and request.cache_mode == coordinator_pb2.CACHE_DEFAULT:
                hit = await self._cache.get(key)
                self._metrics.cache_hit_rate.set(self._cache.hit_rate)
                if hit is not None:
                    self._metrics.requests.labels("cache_hit").inc()
                    return coordinator_pb2.AdmitReply(cached=_cached_pb(hit))
            return await self._queue_and_wait(request, context, model_id, key)
        except QueueFullError as exc:
            self._metrics.requests.labels("queue_full").inc()
            retry_after = self._drain.retry_after(exc.depth)
            context.set_trailing_metadata((("retry-after", str(retry_after)),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{exc.message}; retry in about {retry_after}s")
        except FencedError:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the leader (fenced)")
        except UnavailableError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)

    async def _queue_and_wait(self, request, context, model_id: str, key: str | None) -> coordinator_pb2.AdmitReply:
        idem = request.idempotency_key or request.request_id
        task_id, created = await self._queue.enqueue(
            _task_id(idem), model_id, request.priority, idempotency_key=idem, meta=json.dumps({"cache_key": key or ""}),
        )
        if not created:
            task = await self._queue.get(task_id)
            state = task.state if task else "gone"
            if state == "leased" and task.lease in self._dispatcher.leases:
                # The answer to an earlier Admit was lost on the way: give the same assignment again.
                worker = self._pool.workers[task.worker]
                return coordinator_pb2.AdmitReply(task_id=task_id, assignment=self._assignment(
                    Grant(task_id, worker, model_id, task.lease, task.attempts, int((time.time() + self._lease_ttl) * 1000))))
            if state in ("dead", "cancelled", "done", "gone"):
                await context.abort(grpc.StatusCode.ABORTED, f"task {task_id} is {state}" + (f": {task.error}" if task and task.error else ""))
        started = time.monotonic()
        remaining = context.time_remaining()
        timeout = remaining if remaining is not None else DEFAULT_ADMIT_WAIT_S
        try:
            grant = await self._dispatcher.wait(task_id, model_id, tuple(request.exclude_workers), _prefix(request), timeout)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no worker became free in time")
        self._metrics.queue_wait.observe(time.monotonic() - started)
        self._metrics.requests.labels("assigned").inc()
        return coordinator_pb2.AdmitReply(task_id=task_id, assignment=self._assignment(grant))

    def _assignment(self, grant: Grant) -> coordinator_pb2.Assignment:
        return coordinator_pb2.Assignment(
            worker_id=grant.worker.id, worker_address=grant.worker.address, lease_id=grant.lease_id,
            epoch=self._election.epoch, lease_deadline_ms=grant.lease_deadline_ms, model=grant.model_id,
            attempt=grant.attempt,
        )

    def _cache_key(self, request, model_id: str, version: str) -> str | None:
        if self._cache is None or request.cache_mode == coordinator_pb2.CACHE_NO_STORE:
            return None
        sampling = _sampling(request.sampling)
        if not (self._cache_nondeterministic or is_deterministic(sampling)):
            return None
        return cache_key(model_id, version, [(m.role, m.content) for m in request.messages], sampling)

    async def Heartbeat(self, request: coordinator_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.HeartbeatReply:
        await self._require_leader(context)
        try:
            ok = await self._queue.extend(request.task_id, request.lease_id, self._lease_ttl)
        except FencedError:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the leader (fenced)")
        except UnavailableError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
        return coordinator_pb2.HeartbeatReply(ok=ok, lease_deadline_ms=int((time.time() + self._lease_ttl) * 1000))

    async def Complete(self, request: coordinator_pb2.CompleteRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.CompleteReply:
        await self._require_leader(context)
        worker_id = self._dispatcher.release(request.lease_id) or request.worker_id
        worker = self._pool.workers.get(worker_id)
        try:
            if request.ok:
                state = await self._queue.ack(request.task_id, request.lease_id)
                self._drain.record()
                await self._fill_cache(request)
            else:
                state = await self._queue.fail(request.task_id, request.lease_id, request.error or "failed")
                if state == "dead":
                    log.warning("task %s dead-lettered: %s", request.task_id, request.error)
        except FencedError:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the leader (fenced)")
        except UnavailableError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
        if worker is not None and (request.ok or request.worker_fault):
            worker.breaker.record(request.ok)
        self._metrics.requests.labels("completed" if request.ok else "failed").inc()
        self._metrics.tokens.inc(request.usage.completion_tokens)
        return coordinator_pb2.CompleteReply(task_state=state)

    async def _fill_cache(self, request: coordinator_pb2.CompleteRequest) -> None:
        if self._cache is None or request.finish_reason not in ("stop", "length"):
            return
        task = await self._queue.get(request.task_id)
        key = json.loads(task.meta).get("cache_key") if task and task.meta else None
        if key:
            await self._cache.put(key, CachedResponse(
                deltas=tuple(request.deltas), finish_reason=request.finish_reason, model=task.model,
                prompt_tokens=request.usage.prompt_tokens, completion_tokens=request.usage.completion_tokens,
            ))

    async def Cancel(self, request: coordinator_pb2.CancelRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.CancelReply:
        await self._require_leader(context)
        try:
            await self._queue.cancel(request.task_id, request.reason or "cancelled by the client")
        except (FencedError, UnavailableError) as exc:
            log.warning("cancel of %s not recorded: %s", request.task_id, exc)
        self._dispatcher.abandon(request.task_id, asyncio.CancelledError())
        return coordinator_pb2.CancelReply()

    async def ListModels(self, request, context) -> common_pb2.ListModelsReply:
        return common_pb2.ListModelsReply(models=[
            common_pb2.ModelInfo(id=model_id, aliases=aliases, context_length=context_length, version=version, loaded=True)
            for model_id, (aliases, context_length, version) in sorted(self._pool.models().items())
        ])

    async def Status(self, request, context) -> coordinator_pb2.StatusReply:
        reply = coordinator_pb2.StatusReply(is_leader=self._election.is_leader)
        try:
            leader = await read_leader(self._redis)
            depths = await self._queue.depths()
            cache_entries = await self._cache.size() if self._cache else 0
        except UnavailableError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
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
    """Completions per second over the last minute, for an honest Retry-After."""

    def __init__(self, window: float = 60.0) -> None:
        self._window = window
        self._times: list[float] = []

    def record(self) -> None:
        now = time.monotonic()
        self._times.append(now)
        if len(self._times) > 4096 or now - self._times[0] > self._window:
            self._times = [t for t in self._times if now - t <= self._window]

    def retry_after(self, depth: int) -> int:
        now = time.monotonic()
        recent = [t for t in self._times if now - t <= self._window]
        rate = len(recent) / self._window if recent else 0.0
        return max(1, min(60, round(depth / rate))) if rate > 0 else 5


def _sampling(params: common_pb2.SamplingParams) -> dict:
    values = {name: getattr(params, name) for name in _SAMPLING_FIELDS if params.HasField(name)}
    values["stop"] = list(params.stop)
    return values


def _cached_pb(hit: CachedResponse) -> coordinator_pb2.CachedResponse:
    return coordinator_pb2.CachedResponse(
        deltas=list(hit.deltas), finish_reason=hit.finish_reason, model=hit.model,
        usage=common_pb2.Usage(prompt_tokens=hit.prompt_tokens, completion_tokens=hit.completion_tokens),
    )


def _task_id(idempotency_key: str) -> str:
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]


def _prefix(request: coordinator_pb2.AdmitRequest) -> str:
    """What identifies a shared prompt prefix: everything before the last message, else its start."""
    if not request.messages:
        return ""
    head = request.messages[:-1] or request.messages
    text = "\x1e".join(f"{m.role}\x1f{m.content}" for m in head)
    return text[:2048]

"""One completion through the cluster, as a stream of text deltas.

Admit (cache hit or assignment) → Predict stream from the worker, with lease heartbeats → Complete.
A worker that fails is reported (its task goes back in the queue, or dead after max_retries) and
the request is admitted again on another worker: before the first token that is a plain retry;
after it, a migration that resumes from the text already sent, so the client sees one unbroken
answer. The HTTP layer consumes `deltas()` and reads `finish_reason` and `usage` at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc
import grpc.aio

from cynode.errors import RequestError, UnavailableError
from cynode.rpc import common_pb2, coordinator_pb2, worker_pb2

from .openai_schema import ChatCompletionRequest
from .upstream import Upstream

log = logging.getLogger(__name__)

# Worker answers that mean "your request is wrong", not "try another worker".
_CLIENT_FAULTS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.NOT_FOUND: 404}
_SAMPLING = ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty")


class Completion:
    def __init__(self, upstream: Upstream, chat: ChatCompletionRequest, *, request_id: str, idempotency_key: str,
                 priority: int, key_name: str, cache_mode: int, timeout: float, max_attempts: int) -> None:
        self._upstream = upstream
        self._chat = chat
        self.request_id = request_id
        self._idempotency_key = idempotency_key
        self._priority = priority
        self._key_name = key_name
        self._cache_mode = cache_mode
        self._deadline = time.monotonic() + timeout
        self._max_attempts = max_attempts
        self.model = chat.model
        self.finish_reason = "stop"
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached = False
        self.migrations = 0

    def _remaining(self) -> float:
        return max(0.5, self._deadline - time.monotonic())

    async def deltas(self):
        """Text pieces in order. Raises RequestError/UnavailableError only before the first piece."""
        sent: list[str] = []
        sent_tokens = 0
        exclude: list[str] = []
        for attempt in range(self._max_attempts):
            reply = await self._admit(exclude, retry=attempt > 0)
            if reply.HasField("cached"):
                self._take_cached(reply.cached)
                for piece in reply.cached.deltas:
                    yield piece
                return
            assignment = reply.assignment
            self.model = assignment.model or self.model
            resumed_tokens = sent_tokens
            call = self._upstream.worker(assignment.worker_address).Predict(
                self._predict_request(assignment, "".join(sent), resumed_tokens), timeout=self._remaining())
            heartbeat = asyncio.create_task(self._heartbeat(reply.task_id, assignment))
            outcome, error = "failed", ""
            try:
                async for chunk in _chunks(call):
                    sent_tokens += len(chunk.token_ids)
                    if chunk.finish_reason:
                        self.finish_reason = chunk.finish_reason
                        self.prompt_tokens = chunk.usage.prompt_tokens
                        self.completion_tokens = chunk.usage.completion_tokens
                    if chunk.text:
                        sent.append(chunk.text)
                        yield chunk.text
                outcome = "ok"
            except grpc.aio.AioRpcError as exc:
                error = f"worker {assignment.worker_id}: {exc.details() or exc.code().name}"
                if exc.code() in _CLIENT_FAULTS and not sent:
                    await self._complete(reply.task_id, assignment, ok=False, error=error, fault=False)
                    await self._cancel(reply.task_id, "bad request")
                    raise RequestError(exc.details() or "bad request", status=_CLIENT_FAULTS[exc.code()]) from None
            except BaseException:
                # The client went away (the consumer closed us) or we were cancelled: stop the worker
                # and take the task out of the queue; nobody wants the rest of this answer.
                outcome = "abandoned"
                call.cancel()
                raise
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
                if outcome == "abandoned":
                    await self._complete(reply.task_id, assignment, ok=False, error="client went away", fault=False)
                    await self._cancel(reply.task_id, "client went away")
            if outcome == "ok":
                await self._complete(reply.task_id, assignment, ok=True, deltas=sent)
                return
            state = await self._complete(reply.task_id, assignment, ok=False, error=error, fault=True)
            log.warning("request %s: %s failed after %d tokens (%s); task %s",
                        self.request_id, assignment.worker_id, sent_tokens, error, state)
            if state == "dead":
                break
            exclude.append(assignment.worker_id)
            if sent:
                self.migrations += 1
        raise UnavailableError(f"request {self.request_id} failed on every worker it was given", retry_after=2)

    async def _admit(self, exclude: list[str], *, retry: bool) -> coordinator_pb2.AdmitReply:
        chat, s = self._chat, self._chat.sampling
        sampling = common_pb2.SamplingParams(stop=list(s.stop))
        for name in _SAMPLING + ("max_tokens",):
            if getattr(s, name) is not None:
                setattr(sampling, name, getattr(s, name))
        request = coordinator_pb2.AdmitRequest(
            request_id=self.request_id, model=chat.model, priority=self._priority, api_key_name=self._key_name,
            exclude_workers=exclude, sampling=sampling, idempotency_key=self._idempotency_key,
            messages=[common_pb2.ChatMessage(role=m.role, content=m.content) for m in chat.messages],
            # A retry must not be answered from the cache: part of the answer may be out already.
            cache_mode=coordinator_pb2.CACHE_NO_CACHE if retry and self._cache_mode == coordinator_pb2.CACHE_DEFAULT else self._cache_mode,
        )
        remaining = self._remaining()
        return await self._upstream.call("Admit", request, patience=remaining, timeout=remaining)

    def _predict_request(self, assignment: coordinator_pb2.Assignment, resume_text: str, resume_tokens: int) -> worker_pb2.PredictRequest:
        s = self._chat.sampling
        sampling = common_pb2.SamplingParams(stop=list(s.stop))
        for name in _SAMPLING:
            if getattr(s, name) is not None:
                setattr(sampling, name, getattr(s, name))
        if s.max_tokens is not None:
            sampling.max_tokens = max(1, s.max_tokens - resume_tokens)
        return worker_pb2.PredictRequest(
            request_id=self.request_id, model=assignment.model or self._chat.model, sampling=sampling,
            messages=[common_pb2.ChatMessage(role=m.role, content=m.content) for m in self._chat.messages],
            lease_id=assignment.lease_id, epoch=assignment.epoch, resume_text=resume_text, resume_tokens=resume_tokens,
        )

    def _take_cached(self, cached: coordinator_pb2.CachedResponse) -> None:
        self.cached = True
        self.model = cached.model or self.model
        self.finish_reason = cached.finish_reason
        self.prompt_tokens, self.completion_tokens = cached.usage.prompt_tokens, cached.usage.completion_tokens

    async def _heartbeat(self, task_id: str, assignment: coordinator_pb2.Assignment) -> None:
        """Keep the lease alive at a third of its remaining life, so a failover never expires it."""
        interval = max(1.0, (assignment.lease_deadline_ms / 1000 - time.time()) / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                reply = await self._upstream.call("Heartbeat", coordinator_pb2.HeartbeatRequest(
                    task_id=task_id, lease_id=assignment.lease_id), patience=interval)
                if not reply.ok:
                    log.warning("lease of task %s is gone; the coordinator requeued it", task_id)
            except (UnavailableError, RequestError) as exc:
                log.warning("heartbeat for task %s failed: %s", task_id, exc.message)

    async def _complete(self, task_id: str, assignment: coordinator_pb2.Assignment, *, ok: bool, error: str = "",
                        fault: bool = False, deltas: list[str] | None = None) -> str:
        """Report the end of an attempt; returns the task's new state ('' if it could not be told)."""
        try:
            reply = await self._upstream.call("Complete", coordinator_pb2.CompleteRequest(
                task_id=task_id, lease_id=assignment.lease_id, worker_id=assignment.worker_id, ok=ok, error=error,
                epoch=assignment.epoch, worker_fault=fault, deltas=deltas or [], finish_reason=self.finish_reason if ok else "",
                usage=common_pb2.Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens),
            ))
            return reply.task_state
        except (UnavailableError, RequestError) as exc:
            log.warning("completion of task %s not reported (its lease will expire): %s", task_id, exc.message)
            return ""

    async def _cancel(self, task_id: str, reason: str) -> None:
        with contextlib.suppress(UnavailableError, RequestError):
            await self._upstream.call("Cancel", coordinator_pb2.CancelRequest(task_id=task_id, reason=reason), patience=5)


async def _chunks(call):
    while True:
        chunk = await call.read()
        if chunk is grpc.aio.EOF:
            return
        yield chunk

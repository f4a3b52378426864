"""One completion through the cluster, as a stream of text deltas.

Admit (cache hit or assignment) → Predict stream from the worker → Complete. A worker that fails
is reported (its task goes back in the queue, or dead after max_retries) and the request is
admitted again on another worker: before the first token that is a plain retry; after it, a
migration that resumes from the text already sent, so the client sees one unbroken answer. The
HTTP layer consumes `deltas()` and reads `finish_reason` and the token counts at the end.

What ends an attempt, and what the coordinator hears:
- the answer is complete → Complete(ok), sent off the response path;
- the worker failed (it died, or its engine failed) → Complete(failed, worker_fault): the task is
  requeued and the worker's circuit breaker counts it;
- the worker refused a stale leader's assignment (`FencedError`) → Complete(failed) without
  blame: the new leader hands the task out again;
- the request itself is bad (too long a prompt, say) → Cancel, and the client gets the worker's
  4xx with its code and param;
- the client went away → the worker's stream is cancelled and the task with it: one Cancel.
"""

from __future__ import annotations

import logging
import time

import grpc.aio
from cynode.errors import CynodeError, FencedError, RequestError, UnavailableError
from cynode.inference import ChatMessage, TokenLogprob
from cynode.rpc import common_pb2, coordinator_pb2, worker_pb2
from cynode.rpc.convert import logprobs_from_pb, messages_to_pb, sampling_to_pb
from cynode.rpc.errors import rpc_errors
from cynode.sampling import SamplingParams

from .degraded import Degraded
from .upstream import Upstream

log = logging.getLogger(__name__)

_EOF = grpc.aio.EOF
# A whole (non-streamed) answer travels from the worker in pieces this many ms apart at most: few
# enough to cost little, frequent enough that a worker dying mid-answer loses little work.
COALESCE_MS = 50


class Completion:
    def __init__(self, upstream: Upstream, *, model: str, messages: tuple[ChatMessage, ...], sampling: SamplingParams,
                 request_id: str, idempotency_key: str, priority: int, key_name: str, cache_mode: int,
                 timeout: float, max_attempts: int, stream: bool = True, prompt: str = "",
                 degraded: Degraded | None = None, tools: str = "") -> None:
        """`stream`: the client reads the pieces as they come; when False (it reads the answer
        whole) the worker sends fewer, bigger pieces, which costs every hop less per token.
        `prompt`: a raw completion prompt (`/v1/completions`), given instead of `messages`.
        `tools`: the functions offered to the model, as JSON text ("" for none)."""
        self._upstream = upstream
        self._sampling = sampling
        self.wants_logprobs = sampling.logprobs is not None
        self.request_id = request_id
        self._cache_mode = cache_mode
        # Built once: a retry changes only what differs (excluded workers, the lease, resume text).
        self._admit_request = coordinator_pb2.AdmitRequest(
            request_id=request_id, model=model, priority=priority, api_key_name=key_name,
            sampling=sampling_to_pb(sampling), idempotency_key=idempotency_key, messages=messages_to_pb(messages),
            cache_mode=cache_mode, prompt=prompt, tools=tools,
        )
        self._predict_request_pb = worker_pb2.PredictRequest(
            request_id=request_id, messages=self._admit_request.messages, sampling=self._admit_request.sampling,
            prompt=prompt, tools=tools)
        self._deadline = time.monotonic() + timeout
        self._max_attempts = max_attempts
        self._coalesce_ms = 0 if stream else COALESCE_MS
        self.requested_model = model
        self.model = model
        self.finish_reason = "stop"
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached = False
        self.admitted = False  # the first Admit was answered: `cached` is known
        self._logprobs: list[TokenLogprob] = []  # of the tokens behind the pieces not taken yet
        self.migrations = 0
        self._degraded = degraded
        self.degraded = False  # served without a coordinator (see degraded.py)

    @property
    def outcome(self) -> str:
        return "cached" if self.cached else ("migrated" if self.migrations else "ok")

    def _remaining(self) -> float:
        return max(0.5, self._deadline - time.monotonic())

    async def deltas(self):
        """Text pieces in order. Raises a CynodeError only before the first piece."""
        if self._degraded is not None and self._degraded.active:
            async for piece in self._degraded_deltas():
                yield piece
            return
        sent: list[str] = []
        sent_tokens = 0
        exclude: list[str] = []
        for attempt in range(self._max_attempts):
            reply = await self._admit(exclude, retry=attempt > 0)
            self.admitted = True
            if reply.HasField("cached"):
                self._take_cached(reply.cached)
                for piece in reply.cached.deltas:
                    yield piece
                return
            task_id, assignment = reply.task_id, reply.assignment
            self.model = assignment.model or self.model
            if self._degraded is not None:
                self._degraded.saw_epoch(assignment.epoch)
            call = self._upstream.worker(assignment.worker_address).Predict(
                self._predict_request(assignment, sent, sent_tokens), timeout=self._remaining())
            self._upstream.leases.hold(task_id, assignment.lease_id, assignment.lease_deadline_ms)
            fault, error = True, ""
            try:
                with rpc_errors(f"worker {assignment.worker_id}"):
                    while (chunk := await call.read()) is not _EOF:
                        if chunk.token_ids:
                            sent_tokens += len(chunk.token_ids)
                        if chunk.logprobs:
                            self._logprobs.extend(logprobs_from_pb(chunk.logprobs))
                        if chunk.finish_reason:
                            self.finish_reason = chunk.finish_reason
                            self.prompt_tokens = chunk.usage.prompt_tokens
                            self.completion_tokens = chunk.usage.completion_tokens
                        if chunk.text:
                            sent.append(chunk.text)
                            yield chunk.text
            except RequestError:
                if not sent:  # the request itself is wrong: no other worker would take it either
                    self._give_up(task_id, assignment, "bad request")
                    raise
                error = "refused the resumed request"  # a migration the next worker could not take
            except FencedError as exc:
                fault, error = False, exc.message  # a stale leader's assignment: nobody's fault
            except CynodeError as exc:
                error = exc.message
            except BaseException:
                # The client went away (the consumer closed us) or we were cancelled: stop the worker
                # and take the task out of the queue; nobody wants the rest of this answer.
                call.cancel()
                self._give_up(task_id, assignment, "client went away")
                raise
            else:
                self._upstream.report("Complete", self._complete_request(task_id, assignment, True, sent=sent))
                return
            finally:
                self._upstream.leases.release(assignment.lease_id)
            state = await self._failed(task_id, assignment, error, fault)
            log.warning("request %s: worker %s failed after %d tokens (%s); task %s",
                        self.request_id, assignment.worker_id, sent_tokens, error, state or "not reported")
            if state == "dead":
                break
            if fault:
                exclude.append(assignment.worker_id)
            if sent:
                self.migrations += 1
        raise UnavailableError(f"request {self.request_id} failed on every worker it was given", retry_after=2,
                               code="upstream_failed")

    async def _degraded_deltas(self):
        """No coordinator: straight to a worker from gossip, no cache, no queue, no lease; a worker
        that fails before the first piece is replaced, one that fails after it is migrated."""
        self.degraded = True
        sent: list[str] = []
        sent_tokens = 0
        exclude: list[str] = []
        for _ in range(self._max_attempts):
            picked = self._degraded.pick(self.requested_model, exclude)
            if picked is None:
                break
            worker_id, address = picked
            assignment = coordinator_pb2.Assignment(model=self.requested_model, epoch=self._degraded.epoch)
            call = self._upstream.worker(address).Predict(
                self._predict_request(assignment, sent, sent_tokens), timeout=self._remaining())
            try:
                with rpc_errors(f"worker {worker_id}"):
                    while (chunk := await call.read()) is not _EOF:
                        if chunk.token_ids:
                            sent_tokens += len(chunk.token_ids)
                        if chunk.finish_reason:
                            self.finish_reason = chunk.finish_reason
                            self.prompt_tokens = chunk.usage.prompt_tokens
                            self.completion_tokens = chunk.usage.completion_tokens
                        if chunk.text:
                            sent.append(chunk.text)
                            yield chunk.text
            except RequestError:
                if not sent:
                    raise
            except CynodeError as exc:
                log.warning("request %s (degraded): worker %s failed: %s", self.request_id, worker_id, exc.message)
            except BaseException:
                call.cancel()
                raise
            else:
                return
            exclude.append(worker_id)
            if sent:
                self.migrations += 1
        raise UnavailableError(f"no coordinator, and no worker found through gossip could serve "
                               f"{self.requested_model!r}", retry_after=2, code="upstream_failed")

    def take_logprobs(self) -> list[TokenLogprob]:
        """The log probabilities that came with the pieces so far (when asked for), once each."""
        if not self._logprobs:
            return []
        taken, self._logprobs = self._logprobs, []
        return taken

    async def _admit(self, exclude: list[str], *, retry: bool) -> coordinator_pb2.AdmitReply:
        request = self._admit_request
        if retry:
            del request.exclude_workers[:]
            request.exclude_workers.extend(exclude)
            if self._cache_mode == coordinator_pb2.CACHE_DEFAULT:
                request.cache_mode = coordinator_pb2.CACHE_NO_CACHE  # part of the answer may be out already
        remaining = self._remaining()
        return await self._upstream.call("Admit", request, patience=remaining, timeout=remaining)

    def _predict_request(self, assignment: coordinator_pb2.Assignment, sent: list[str], sent_tokens: int) -> worker_pb2.PredictRequest:
        request = self._predict_request_pb
        request.model = assignment.model or self.requested_model
        request.lease_id, request.epoch, request.coalesce_ms = assignment.lease_id, assignment.epoch, self._coalesce_ms
        if sent_tokens:  # a migration: the next worker continues after what the client has
            request.resume_text, request.resume_tokens = "".join(sent), sent_tokens
            if self._sampling.max_tokens is not None:
                request.sampling.max_tokens = max(1, self._sampling.max_tokens - sent_tokens)
        return request

    def _take_cached(self, cached: coordinator_pb2.CachedResponse) -> None:
        self.cached = True
        self.model = cached.model or self.model
        self.finish_reason = cached.finish_reason
        self.prompt_tokens, self.completion_tokens = cached.usage.prompt_tokens, cached.usage.completion_tokens

    def _complete_request(self, task_id: str, assignment: coordinator_pb2.Assignment, ok: bool, *,
                          sent: list[str] = (), error: str = "", fault: bool = False) -> coordinator_pb2.CompleteRequest:
        return coordinator_pb2.CompleteRequest(
            task_id=task_id, lease_id=assignment.lease_id, worker_id=assignment.worker_id, ok=ok, error=error,
            epoch=assignment.epoch, worker_fault=fault, model=self.model,
            deltas=sent if ok and assignment.cacheable else (), finish_reason=self.finish_reason if ok else "",
            usage=common_pb2.Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens),
        )

    async def _failed(self, task_id: str, assignment: coordinator_pb2.Assignment, error: str, fault: bool) -> str:
        """Report a failed attempt; the task's new state ('' if it could not be told)."""
        try:
            reply = await self._upstream.call("Complete", self._complete_request(
                task_id, assignment, False, error=error, fault=fault), patience=min(10.0, self._remaining()))
            return reply.task_state
        except CynodeError as exc:
            log.warning("failure of task %s not reported (its lease will expire): %s", task_id, exc.message)
            return ""

    def _give_up(self, task_id: str, assignment: coordinator_pb2.Assignment, reason: str) -> None:
        self._upstream.report("Cancel", coordinator_pb2.CancelRequest(
            task_id=task_id, lease_id=assignment.lease_id, reason=reason))

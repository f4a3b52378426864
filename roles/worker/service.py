"""The worker's gRPC service: Predict streams tokens straight to the gateway; Health reports readiness."""

from __future__ import annotations

import contextlib
import logging
import time

import grpc
import grpc.aio

from cynode.engines.base import ChatMessage, GenerationRequest, InferenceEngine, SamplingParams
from cynode.errors import EngineError, RequestError
from cynode.rpc import common_pb2, worker_pb2, worker_pb2_grpc

from .metrics import WorkerMetrics

log = logging.getLogger(__name__)

_STATUS_FOR_HTTP = {404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.OUT_OF_RANGE}


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(self, node_id: str, engine: InferenceEngine, metrics: WorkerMetrics, max_concurrency: int) -> None:
        self._node_id = node_id
        self._engine = engine
        self._metrics = metrics
        self._max_concurrency = max_concurrency
        # Fencing: the highest leader epoch seen; assignments from older leaders are refused.
        self.highest_epoch = 0

    async def Predict(self, request: worker_pb2.PredictRequest, context: grpc.aio.ServicerContext):
        if request.epoch < self.highest_epoch:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"stale assignment: epoch {request.epoch} is older than {self.highest_epoch}",
            )
        self.highest_epoch = max(self.highest_epoch, request.epoch)
        generation = _to_generation(request)
        started = time.monotonic()
        last = None
        tokens = 0
        try:
            async with contextlib.aclosing(self._engine.generate(generation)) as stream:
                async for delta in stream:
                    now = time.monotonic()
                    if delta.token_ids:
                        if last is None:
                            self._metrics.ttft.labels(generation.model).observe(now - started)
                        else:
                            self._metrics.inter_token.labels(generation.model).observe((now - last) / len(delta.token_ids))
                        last = now
                        tokens += len(delta.token_ids)
                    chunk = worker_pb2.PredictChunk(text=delta.text, token_ids=delta.token_ids, finish_reason=delta.finish_reason or "")
                    if delta.usage is not None:
                        # A resumed request's earlier tokens are part of the answer, not of the prompt.
                        resumed = min(request.resume_tokens, delta.usage.prompt_tokens)
                        chunk.usage.CopyFrom(common_pb2.Usage(
                            prompt_tokens=delta.usage.prompt_tokens - resumed,
                            completion_tokens=delta.usage.completion_tokens + resumed,
                        ))
                    yield chunk
        except RequestError as exc:
            await context.abort(_STATUS_FOR_HTTP.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message)
        except EngineError as exc:
            log.error("request %s failed in the engine: %s", request.request_id, exc)
            await context.abort(grpc.StatusCode.INTERNAL, f"engine error: {exc.message}")
        finally:
            elapsed = time.monotonic() - started
            self._metrics.latency.labels(generation.model).observe(elapsed)
            self._metrics.tokens.labels(generation.model).inc(tokens)
            if tokens and elapsed > 0:
                self._metrics.tokens_per_second.labels(generation.model).observe(tokens / elapsed)

    async def Health(self, request: worker_pb2.HealthRequest, context: grpc.aio.ServicerContext) -> worker_pb2.HealthReply:
        health = self._engine.health()
        models = [
            common_pb2.ModelInfo(id=m.id, aliases=m.aliases, backend=m.backend, context_length=m.context_length,
                                 loaded=m.loaded, version=m.version)
            for m in self._engine.models()
        ]
        return worker_pb2.HealthReply(
            ready=health.ready, node_id=self._node_id, backend=self._engine.backend, models=models,
            active_requests=health.active_requests, max_concurrency=self._max_concurrency, detail=health.detail,
        )


def _to_generation(request: worker_pb2.PredictRequest) -> GenerationRequest:
    s = request.sampling
    sampling = SamplingParams(
        temperature=s.temperature if s.HasField("temperature") else 1.0,
        top_p=s.top_p if s.HasField("top_p") else 1.0,
        top_k=s.top_k if s.HasField("top_k") else 0,
        max_tokens=s.max_tokens if s.HasField("max_tokens") else None,
        stop=tuple(s.stop),
        seed=s.seed if s.HasField("seed") else None,
        presence_penalty=s.presence_penalty if s.HasField("presence_penalty") else 0.0,
        frequency_penalty=s.frequency_penalty if s.HasField("frequency_penalty") else 0.0,
        repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else 1.0,
    )
    return GenerationRequest(
        request_id=request.request_id or request.lease_id,
        model=request.model,
        messages=tuple(ChatMessage(m.role, m.content) for m in request.messages),
        prompt=request.prompt or None,
        sampling=sampling,
        continuation=request.resume_text,
    )

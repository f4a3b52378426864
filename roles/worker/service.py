"""The worker's gRPC service: Predict streams tokens straight to the gateway; Health reports readiness;
LoadModel/UnloadModel/ListModels manage the models the MemoryManager holds."""

from __future__ import annotations

import contextlib
import logging
import time

import grpc
import grpc.aio

from cynode.engines.base import ChatMessage, GenerationRequest
from cynode.engines.memory_manager import MemoryManager
from cynode.engines.registry import ModelSpec, sampling_for
from cynode.errors import EngineError, RequestError
from cynode.rpc import common_pb2, worker_pb2, worker_pb2_grpc

from .metrics import WorkerMetrics

log = logging.getLogger(__name__)

_STATUS_FOR_HTTP = {404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.OUT_OF_RANGE}
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_tokens", "seed", "presence_penalty", "frequency_penalty",
                    "repetition_penalty")


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(self, node_id: str, backend: str, manager: MemoryManager, metrics: WorkerMetrics,
                 max_concurrency: int) -> None:
        self._node_id = node_id
        self._backend = backend
        self._manager = manager
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
        started = time.monotonic()
        last = None
        tokens = 0
        model = request.model
        outcome, prompt_tokens = "cancelled", 0  # stays "cancelled" when the caller goes away mid-stream
        try:
            async with self._manager.use(request.model) as (engine, spec):
                model = spec.id
                generation = _to_generation(request, spec)
                async with contextlib.aclosing(engine.generate(generation)) as stream:
                    async for delta in stream:
                        now = time.monotonic()
                        if delta.token_ids:
                            if last is None:
                                self._metrics.ttft.labels(model).observe(now - started)
                            else:
                                self._metrics.inter_token.labels(model).observe((now - last) / len(delta.token_ids))
                            last = now
                            tokens += len(delta.token_ids)
                        chunk = worker_pb2.PredictChunk(text=delta.text, token_ids=delta.token_ids,
                                                        finish_reason=delta.finish_reason or "")
                        if delta.usage is not None:
                            prompt_tokens = delta.usage.prompt_tokens
                            # A resumed request's earlier tokens are part of the answer, not of the prompt.
                            resumed = min(request.resume_tokens, delta.usage.prompt_tokens)
                            chunk.usage.CopyFrom(common_pb2.Usage(
                                prompt_tokens=delta.usage.prompt_tokens - resumed,
                                completion_tokens=delta.usage.completion_tokens + resumed,
                            ))
                        yield chunk
            outcome = "ok"
        except RequestError as exc:
            outcome = "rejected"
            await context.abort(_STATUS_FOR_HTTP.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message)
        except EngineError as exc:
            outcome = "error"
            log.error("request %s failed in the engine: %s", request.request_id, exc)
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if exc.retryable else grpc.StatusCode.INTERNAL
            await context.abort(code, f"engine error: {exc.message}")
        finally:
            elapsed = time.monotonic() - started
            self._metrics.latency.labels(model).observe(elapsed)
            self._metrics.tokens.labels(model).inc(tokens)
            self._metrics.record_request(model, outcome, prompt_tokens)
            if tokens and elapsed > 0:
                self._metrics.tokens_per_second.labels(model).observe(tokens / elapsed)

    async def Health(self, request: worker_pb2.HealthRequest, context: grpc.aio.ServicerContext) -> worker_pb2.HealthReply:
        return worker_pb2.HealthReply(
            ready=True, node_id=self._node_id, backend=self._backend, models=self.model_infos(),
            active_requests=self.active_requests(), max_concurrency=self._max_concurrency, detail="ok",
        )

    async def LoadModel(self, request: worker_pb2.ModelRequest, context) -> worker_pb2.ModelReply:
        try:
            await self._manager.load(request.model)
        except RequestError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, exc.message)
        except EngineError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED if exc.retryable else grpc.StatusCode.INTERNAL, exc.message)
        return worker_pb2.ModelReply(model=self._info(request.model))

    async def UnloadModel(self, request: worker_pb2.ModelRequest, context) -> worker_pb2.ModelReply:
        try:
            await self._manager.unload(request.model)
        except RequestError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, exc.message)
        except EngineError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, exc.message)
        return worker_pb2.ModelReply(model=self._info(request.model))

    async def ListModels(self, request, context) -> common_pb2.ListModelsReply:
        return common_pb2.ListModelsReply(models=self.model_infos())

    def active_requests(self) -> int:
        return sum(entry["in_use"] for entry in self._manager.status())

    def model_infos(self) -> list[common_pb2.ModelInfo]:
        registry = self._manager.registry
        status = {entry["id"]: entry for entry in self._manager.status() if not entry["retiring"]}
        infos = []
        for spec in registry.specs:
            entry = status.get(spec.id, {})
            infos.append(common_pb2.ModelInfo(
                id=spec.id, aliases=spec.aliases, backend=self._backend, context_length=spec.context_length or 0,
                loaded=bool(entry.get("loaded")), version=registry.version_of(spec),
                footprint_bytes=entry.get("footprint") or 0, in_use=entry.get("in_use", 0),
            ))
        return infos

    def _info(self, name: str) -> common_pb2.ModelInfo:
        spec = self._manager.registry.resolve(name)
        return next((i for i in self.model_infos() if spec and i.id == spec.id), common_pb2.ModelInfo(id=name))


def _to_generation(request: worker_pb2.PredictRequest, spec: ModelSpec) -> GenerationRequest:
    s = request.sampling
    explicit = {name: getattr(s, name) for name in _SAMPLING_FIELDS if s.HasField(name)}
    if s.stop:
        explicit["stop"] = tuple(s.stop)
    return GenerationRequest(
        request_id=request.request_id or request.lease_id,
        model=spec.id,
        messages=tuple(ChatMessage(m.role, m.content) for m in request.messages),
        prompt=request.prompt or None,
        sampling=sampling_for(spec, explicit),  # the model's default_sampling under what the client set
        continuation=request.resume_text,
    )

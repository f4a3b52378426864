"""The worker's gRPC service: Predict streams tokens straight to the gateway; Health reports readiness;
LoadModel/UnloadModel/ListModels manage the models the MemoryManager holds.

Handlers raise cynode errors (an engine's `RequestError` for a too-long prompt keeps its code and
param); `cynode.rpc.errors` turns them into the call's status for the gateway.
"""

from __future__ import annotations

import contextlib
import logging
import time

from cynode.engines.base import GenerationRequest
from cynode.engines.embedding import SupportsEmbedding
from cynode.engines.memory_manager import MemoryManager
from cynode.errors import EngineError, FencedError, RequestError
from cynode.rpc import common_pb2, worker_pb2, worker_pb2_grpc
from cynode.peer_auth import peer_identity
from cynode.rpc.callers import ANY_MEMBER
from cynode.rpc.convert import logprobs_to_pb, messages_from_pb, sampling_from_pb

from .metrics import WorkerMetrics

log = logging.getLogger(__name__)


class WorkerService(worker_pb2_grpc.WorkerServicer):
    # The roles a caller's certificate must name, per method (cynode.rpc.callers).
    CALLERS = {
        "Predict": frozenset({"gateway"}),
        "Embed": frozenset({"gateway"}),
        "LoadModel": frozenset({"gateway", "coordinator"}),
        "UnloadModel": frozenset({"gateway", "coordinator"}),
        "Health": ANY_MEMBER,
        "ListModels": ANY_MEMBER,
    }

    def __init__(self, node_id: str, backend: str, manager: MemoryManager, metrics: WorkerMetrics) -> None:
        self._node_id = node_id
        self._backend = backend
        self._manager = manager
        self._metrics = metrics
        # Fencing: the epoch of the newest leader; assignments from older leaders are refused. Only
        # a coordinator's health check moves it (its certificate says coordinator): an assignment's
        # epoch comes through the gateway, and one absurd value there would fence every real one.
        self.highest_epoch = 0

    async def Predict(self, request: worker_pb2.PredictRequest, context):
        self._fence(request.epoch)
        started = time.monotonic()
        last = None
        tokens = 0
        model = request.model
        outcome, prompt_tokens = "cancelled", 0  # stays "cancelled" when the caller goes away mid-stream
        try:
            async with self._manager.use(request.model) as (engine, spec):
                model = spec.id
                ttft, inter_token = self._metrics.ttft.labels(model), self._metrics.inter_token.labels(model)
                generation = GenerationRequest(
                    request_id=request.request_id or request.lease_id, model=spec.id,
                    messages=messages_from_pb(request.messages), prompt=request.prompt or None,
                    # The model's default_sampling under what the client set.
                    sampling=sampling_from_pb(request.sampling).over(spec.default_sampling),
                    continuation=request.resume_text, tools=request.tools,
                )
                merge = request.coalesce_ms / 1000
                pending: worker_pb2.PredictChunk | None = None  # merged deltas not sent yet
                flushed = started
                async with contextlib.aclosing(engine.generate(generation)) as stream:
                    async for delta in stream:
                        now = time.monotonic()
                        if delta.token_ids:
                            if last is None:
                                ttft.observe(now - started)
                            else:
                                inter_token.observe((now - last) / len(delta.token_ids))
                            last = now
                            tokens += len(delta.token_ids)
                        if pending is None:
                            pending = worker_pb2.PredictChunk(text=delta.text, token_ids=delta.token_ids)
                        else:
                            pending.text += delta.text
                            pending.token_ids.extend(delta.token_ids)
                        if delta.logprobs:
                            pending.logprobs.extend(logprobs_to_pb(delta.logprobs))
                        if delta.finish_reason:
                            pending.finish_reason = delta.finish_reason
                        if delta.usage is not None:
                            prompt_tokens = delta.usage.prompt_tokens
                            # A resumed request's earlier tokens are part of the answer, not of the prompt.
                            resumed = min(request.resume_tokens, delta.usage.prompt_tokens)
                            pending.usage.prompt_tokens = delta.usage.prompt_tokens - resumed
                            pending.usage.completion_tokens = delta.usage.completion_tokens + resumed
                        if not merge or delta.finish_reason or now - flushed >= merge:
                            yield pending
                            pending, flushed = None, now
                if pending is not None:
                    yield pending
            outcome = "ok"
        except RequestError:
            outcome = "rejected"
            raise
        except EngineError:
            outcome = "error"
            raise
        finally:
            elapsed = time.monotonic() - started
            self._metrics.latency.labels(model).observe(elapsed)
            self._metrics.record_request(model, outcome, prompt_tokens)
            if tokens:
                self._metrics.tokens.labels(model).inc(tokens)
                if elapsed > 0:
                    self._metrics.tokens_per_second.labels(model).observe(tokens / elapsed)

    async def Embed(self, request: worker_pb2.EmbedRequest, context) -> worker_pb2.EmbedReply:
        self._fence(request.epoch)
        started, outcome, model, tokens = time.monotonic(), "cancelled", request.model, 0
        try:
            async with self._manager.use(request.model) as (engine, spec):
                model = spec.id
                if not isinstance(engine, SupportsEmbedding):
                    raise RequestError(f"model {spec.id!r} does not make embeddings; ask an embedding model "
                                       "(GET /v1/models lists them)", status=400, param="model",
                                       code="model_not_supported")
                result = await engine.embed(list(request.input), dimensions=request.dimensions or None)
            tokens, outcome = result.prompt_tokens, "ok"
            return worker_pb2.EmbedReply(data=[worker_pb2.Embedding(values=v) for v in result.vectors], model=model,
                                         usage=common_pb2.Usage(prompt_tokens=result.prompt_tokens))
        except RequestError:
            outcome = "rejected"
            raise
        except EngineError:
            outcome = "error"
            raise
        finally:
            self._metrics.latency.labels(model).observe(time.monotonic() - started)
            self._metrics.record_request(model, outcome, tokens)

    def _fence(self, epoch: int) -> None:
        if epoch < self.highest_epoch:
            raise FencedError(f"stale assignment: epoch {epoch} is older than {self.highest_epoch}, "
                              "the epoch of the leading coordinator")

    async def Health(self, request: worker_pb2.HealthRequest, context) -> worker_pb2.HealthReply:
        if request.leader_epoch > self.highest_epoch:
            peer = peer_identity(context)  # None: the coordinator of this same node, in-process
            if peer is None or "coordinator" in peer.roles:
                self.highest_epoch = request.leader_epoch
        return worker_pb2.HealthReply(
            ready=True, node_id=self._node_id, backend=self._backend, models=self.model_infos(),
            active_requests=self.active_requests(), max_concurrency=self._manager.capacity(), detail="ok",
        )

    async def LoadModel(self, request: worker_pb2.ModelRequest, context) -> worker_pb2.ModelReply:
        await self._manager.load(request.model)
        return worker_pb2.ModelReply(model=self._info(request.model))

    async def UnloadModel(self, request: worker_pb2.ModelRequest, context) -> worker_pb2.ModelReply:
        await self._manager.unload(request.model)
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
        if spec is None:
            raise RequestError(f"model {name!r} is not registered here", status=404, param="model",
                               code="model_not_found")
        return next(i for i in self.model_infos() if i.id == spec.id)

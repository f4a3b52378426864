"""The worker role: the registry's models, loaded on demand by the MemoryManager, behind the Worker gRPC service."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from cynode.engines import Platform, create_engine, platform_of, select_backend
from cynode.engines.base import InferenceEngine
from cynode.engines.memory_manager import MemoryManager
from cynode.engines.registry import ModelRegistry, ModelSpec, sim_spec
from cynode.errors import ConfigError, CynodeError, StartupError
from cynode.redis_conn import RedisConnection
from cynode.redis_tls import open_redis
from cynode.role import Role, RoleContext
from cynode.rpc import worker_pb2_grpc
from cynode.rpc.server import RpcServer
from cynode.tasks import BackgroundTasks
from cynode.training_store import TrainingStore

from .metrics import WorkerMetrics
from .service import WorkerService
from .training_service import TrainingService

log = logging.getLogger(__name__)

WARM_WITHIN_S = 600.0  # adapters published this recently are loaded ahead of their first request
BUDGET_SHARE = 0.8  # of the memory available at start, when [worker] memory_budget is not set


class WorkerRole(Role):
    name = "worker"

    def __init__(self, ctx: RoleContext) -> None:
        self._ctx = ctx
        self._config = ctx.config.worker
        self._manager: MemoryManager | None = None
        self._service: WorkerService | None = None
        self._server: RpcServer | None = None
        self._tasks = BackgroundTasks("worker")
        self._metrics = WorkerMetrics.register(ctx.telemetry)
        self._platform: Platform = Platform()
        self._training: TrainingService | None = None
        self._ft_redis: RedisConnection | None = None
        self._base_registry: ModelRegistry | None = None
        self._adapters: dict = {}  # published adapters, as read from Redis
        self._served_adapters: set[str] = set()  # the adapter ids in the registry now

    async def start(self) -> None:
        try:
            self._backend = select_backend(self._config.backend)
            self._platform = platform_of(self._backend)
            registry = self._base_registry = self._registry()
        except CynodeError as exc:
            raise StartupError(f"[worker] {exc.message}") from exc
        log.info("worker backend %s (asked for %s); %d model(s) registered", self._backend, self._config.backend,
                 len(registry.specs))
        self._manager = MemoryManager(
            registry, budget_bytes=self._config.memory_budget or self._default_budget(), factory=self._make_engine,
            idle_unload=self._config.idle_unload or None, per_model_concurrency=self._config.max_concurrency,
        )
        if self._config.model_registry is None:
            # Only the built-in model: load it now, so the node is ready to answer when it says so.
            try:
                await self._manager.load(registry.specs[0].id)
            except CynodeError as exc:
                raise StartupError(f"[worker] backend {self._backend!r}: {exc.message}") from exc
        self._service = WorkerService(self._ctx.config.node.id, self._backend, self._manager, self._metrics)
        self._metrics.active.set_function(self._service.active_requests)
        self._metrics.gpu_memory_used.set_function(self._platform.memory_used)
        self._metrics.gpu_utilization.set_function(self._platform.utilization)
        self._server = self._ctx.rpc_server("worker", self._config.listen)
        self._server.add(worker_pb2_grpc.add_WorkerServicer_to_server, self._service)
        await self._server.start()
        log.info("worker serving %s on %s", ", ".join(s.id for s in registry.specs), self._config.listen)
        self._tasks.spawn(self._reap_idle_forever(), "idle unload")
        if self._ctx.gossip is not None:
            self._tasks.spawn(self._publish_forever(), "gossip metadata")
        if self._backend != "sim" and {"training", "inference"} & set(self._config.tags):
            cfg = self._ctx.config
            # A worker-only node opens its own connection: fine-tuning jobs and adapters live in Redis.
            self._ft_redis = self._ctx.redis or open_redis(cfg.redis, cfg.cluster.name)
            if "inference" in self._config.tags:
                self._tasks.spawn(self._follow_adapters_forever(), "published adapters")
            if "training" in self._config.tags:
                await self._start_training()

    async def _follow_adapters_forever(self, every: float = 1.0) -> None:
        """Serve every published adapter of a model this worker serves, as its own model id, from the
        moment it is published (engines/lora_serving.py): no restart, no SIGHUP."""
        store = TrainingStore(self._ft_redis)
        while True:
            try:
                adapters = await store.adapters()
                if adapters != self._adapters:
                    self._adapters = adapters
                    self._compose_registry()
            except CynodeError as exc:
                log.warning("published adapters: %s", exc.message)
            except Exception:
                log.exception("following published adapters failed")
            await asyncio.sleep(every)

    def _compose_registry(self) -> None:
        from cynode.engines.lora_serving import registry_with_adapters

        registry = registry_with_adapters(self._base_registry, self._adapters, servable=self._serves_adapters)
        served = {spec.id for spec in registry.specs if spec.base is not None}
        added = sorted(served - self._served_adapters)
        self._served_adapters = served
        self._manager.update_registry(registry)
        self._publish()  # coordinators check this worker again when its models revision changes
        if added:
            log.info("serving fine-tuned adapter(s) %s", ", ".join(added))
        fresh = [m for m in added if time.time() - float(self._adapters[m].get("created_at") or 0) < WARM_WITHIN_S]
        for model_id in fresh:  # just published: load it now, so its first request does not wait
            self._tasks.spawn(self._warm(model_id), f"load adapter {model_id}")

    async def _warm(self, model_id: str) -> None:
        try:
            await self._manager.load(model_id)
        except CynodeError as exc:
            log.warning("adapter %s not loaded ahead of use: %s", model_id, exc.message)

    def _serves_adapters(self, base: ModelSpec) -> bool:
        """Whether `base`'s engine here hot-loads adapters: transformers always, vLLM when
        `[worker.lora] vllm` starts it with LoRA."""
        from cynode.engines.factory import backend_for

        backend = backend_for(self._backend, base)
        return backend.endswith("-transformers") or (backend.endswith("-vllm") and self._config.lora.vllm)

    async def _start_training(self) -> None:
        """Take fine-tuning jobs (roles/worker/training_service.py)."""
        from cynode.engines.factory import _model_dir  # the one place a model's folder is made

        cfg = self._ctx.config
        redis = self._ft_redis

        def folders() -> dict:
            out = {}
            for spec in self._manager.registry.specs:
                if spec.base is not None:  # a served adapter is no base model to train on
                    continue
                folder = spec.path if spec.source_kind == "folder" else cfg.models_path / spec.id
                for name in spec.names:
                    out[name] = folder
            return out

        def model_dir(name: str):
            spec = self._manager.registry.resolve(name)
            if spec is None:
                raise CynodeError(f"model {name!r} is not in this worker's registry", code="model_not_found")
            return _model_dir(spec, cfg.models_path)

        self._training = TrainingService(worker_id=cfg.node.id, redis=redis,
                                         training_dir=cfg.training_path, models=folders, model_dir=model_dir,
                                         free_memory=self._platform.free_memory,
                                         threads=self._config.training_threads)
        await self._training.start()

    def _registry(self) -> ModelRegistry:
        if self._backend == "sim" and self._config.model_registry is None:
            # The benchmarking backend serves one model, "sim", and nothing real.
            return ModelRegistry([sim_spec()], builtin=False)
        return ModelRegistry.load(self._config.model_registry)

    def _make_engine(self, spec: ModelSpec) -> InferenceEngine:
        """MemoryManager's factory (runs in a thread: a GGUF source is converted on first use).

        The manager gives the engine its share of the memory budget for the KV cache (what the loaded
        models' weights leave, split between them: MemoryManager._kv_share) before it starts; its
        capacity follows from that. Published fine-tuned adapters never come here: the manager loads
        them into their base model's engine.
        """
        return create_engine(self._backend, models_dir=self._ctx.config.models_path, spec=spec,
                             max_concurrency=self._config.max_concurrency, sim=self._config.sim.model_dump(),
                             lora=self._config.lora.model_dump())

    async def reload(self) -> None:
        """SIGHUP: re-read models.json; new models become servable, removed ones unload once idle."""
        if self._manager is None or self._config.model_registry is None:
            return
        try:
            registry = ModelRegistry.load(self._config.model_registry)
        except ConfigError as exc:
            log.error("models.json not reloaded, keeping the previous registry:\n%s", exc)
            return
        self._base_registry = registry
        self._compose_registry()  # the published adapters stay
        log.info("models.json reloaded: %s", ", ".join(s.id for s in registry.specs))

    async def _reap_idle_forever(self) -> None:
        every = min(30.0, max(1.0, (self._config.idle_unload or 60.0) / 4))
        while True:
            await asyncio.sleep(every)
            try:
                await self._manager.reap_idle()
            except Exception:
                log.exception("unloading idle models failed")

    async def _publish_forever(self, every: float = 2.0) -> None:
        """Keep this worker's facts in gossip metadata: coordinators find workers there."""
        while True:
            self._publish()
            await asyncio.sleep(every)

    def _publish(self) -> None:
        if self._ctx.gossip is None or self._service is None:
            return
        registry = self._manager.registry
        try:  # a failure here must not end the loop that keeps this worker in gossip
            # A change of `models_rev` (a model or adapter added, removed or republished) makes each
            # coordinator health-check this worker at once, so a new adapter is routed within a gossip round.
            revision = hashlib.blake2b(repr(sorted((s.id, registry.version_of(s)) for s in registry.specs)).encode(),
                                       digest_size=8).hexdigest()
            self._ctx.gossip.publish(
                models=[s.id for s in registry.specs], models_rev=revision, loaded=self._manager.loaded(),
                backend=self._backend, active=self._service.active_requests(),
                capacity=self._manager.capacity(), weight=self._config.weight, tags=list(self._config.tags),
                free_mem=self._platform.free_memory(),
            )
        except Exception:
            log.exception("publishing worker metadata failed")

    async def drain(self, timeout: float) -> None:
        # Stops accepting new calls and lets running streams finish until the grace runs out.
        if self._server:
            await self._server.stop(grace=timeout)

    async def stop(self) -> None:
        if self._training is not None:
            await self._training.close()
        await self._tasks.close()
        if self._ft_redis is not None and self._ctx.redis is None:
            await self._ft_redis.close()
        if self._server:
            await self._server.stop(grace=None)
        if self._manager:
            await self._manager.close()

    def _default_budget(self) -> int:
        return int(self._platform.free_memory() * BUDGET_SHARE) or 1 << 30

    def readiness(self) -> tuple[bool, str]:
        if self._manager is None:
            return False, "models not loaded yet"
        loading = [entry["id"] for entry in self._manager.status() if entry["loading"]]
        loaded = f"loaded: {', '.join(self._manager.loaded()) or 'none (models load on first use)'}"
        return True, f"loading model {', '.join(loading)}; {loaded}" if loading else loaded


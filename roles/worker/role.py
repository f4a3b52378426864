"""The worker role: hosts an inference engine behind the Worker gRPC service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import grpc.aio

from cynode.engines import create_engine, select_backend
from cynode.engines.base import InferenceEngine
from cynode.errors import CynodeError, StartupError
from cynode.role import Role, RoleContext
from cynode.rpc import worker_pb2_grpc

from .metrics import WorkerMetrics
from .service import WorkerService

log = logging.getLogger(__name__)


class WorkerRole(Role):
    name = "worker"

    def __init__(self, ctx: RoleContext) -> None:
        self._ctx = ctx
        self._config = ctx.config.worker
        self._engine: InferenceEngine | None = None
        self._server: grpc.aio.Server | None = None
        self._publisher: asyncio.Task | None = None
        self._metrics = WorkerMetrics.register(ctx.telemetry)

    async def start(self) -> None:
        if self._config.model_registry is not None:
            # Refuse rather than ignore: a user listing models must not silently get only the built-in one.
            raise StartupError(f"[worker] model_registry {str(self._config.model_registry)!r}: models.json is not "
                               "supported by this build yet; remove the setting to serve the built-in model")
        backend = select_backend(self._config.backend)
        log.info("worker backend %s (asked for %s)", backend, self._config.backend)
        try:
            # Blocking: the first start converts the built-in model (about 20 s).
            self._engine = await asyncio.to_thread(
                create_engine, backend, models_dir=self._ctx.config.models_path, max_concurrency=self._config.max_concurrency,
                sim=self._config.sim.model_dump(),
            )
            await self._engine.start()
        except CynodeError as exc:
            raise StartupError(f"[worker] backend {backend!r}: {exc.message}") from exc
        engine = self._engine
        self._metrics.active.set_function(lambda: engine.health().active_requests)
        self._metrics.gpu_memory_used.set_function(_resident_bytes)
        self._metrics.gpu_utilization.set_function(_cpu_percent())
        service = WorkerService(self._ctx.config.node.id, engine, self._metrics, self._config.max_concurrency)
        self._server = grpc.aio.server(interceptors=[self._ctx.peer_auth.server_interceptor()])
        worker_pb2_grpc.add_WorkerServicer_to_server(service, self._server)
        try:
            bound = self._server.add_insecure_port(self._config.listen)
        except RuntimeError:  # newer grpcio raises instead of returning 0
            bound = 0
        if bound == 0:
            raise StartupError(f"[worker] listen {self._config.listen!r}: cannot bind (port in use?)")
        await self._server.start()
        log.info("worker serving %s on %s", ", ".join(m.id for m in engine.models()), self._config.listen)
        if self._ctx.membership is not None:
            self._publisher = asyncio.create_task(self._publish_forever(), name="worker-gossip-meta")

    async def _publish_forever(self, every: float = 2.0) -> None:
        """Keep this worker's facts in gossip metadata: coordinators find workers there."""
        while True:
            try:
                health = self._engine.health()
                self._ctx.membership.publish(
                    models=[m.id for m in self._engine.models()], backend=self._engine.backend,
                    active=health.active_requests, capacity=self._config.max_concurrency,
                    weight=self._config.weight, tags=list(self._config.tags), free_mem=_free_memory(),
                )
            except Exception:
                log.exception("publishing worker metadata failed")
            await asyncio.sleep(every)

    async def drain(self, timeout: float) -> None:
        # Stops accepting new calls and lets running streams finish until the grace runs out.
        if self._server:
            await self._server.stop(grace=timeout)

    async def stop(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        if self._server:
            await self._server.stop(grace=None)
        if self._engine:
            await self._engine.close()

    def readiness(self) -> tuple[bool, str]:
        if self._engine is None:
            return False, "engine not started"
        health = self._engine.health()
        return health.ready, health.detail


def _resident_bytes() -> float:
    """Host memory this process uses; the CPU's stand-in for accelerator memory."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0.0


def _cpu_percent():
    """This process's CPU use in percent since the last scrape: the CPU's stand-in for GPU utilisation."""
    try:
        import psutil
    except ImportError:  # psutil comes with the `cpu` extra; without it the gauge reads 0
        return lambda: 0.0
    process = psutil.Process()
    process.cpu_percent()  # the first call only sets the baseline
    return process.cpu_percent


def _free_memory() -> int:
    """Bytes the host can still give (MemAvailable); accelerator memory comes with the memory manager."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0

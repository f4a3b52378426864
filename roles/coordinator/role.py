"""The coordinator role: leader election, the worker pool and the control-plane gRPC service."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc.aio

from cynode.config import connect_host, join_host_port, split_host_port
from cynode.errors import StartupError
from cynode.role import Role, RoleContext
from cynode.rpc import coordinator_pb2_grpc

from .leader import LeaderElection
from .leases import LeaseStore
from .metrics import CoordinatorMetrics
from .pool import WorkerPool
from .service import CoordinatorService

log = logging.getLogger(__name__)


class CoordinatorRole(Role):
    name = "coordinator"

    def __init__(self, ctx: RoleContext) -> None:
        if ctx.redis is None:
            raise StartupError("the coordinator role needs Redis ([redis] url)")
        self._ctx = ctx
        self._config = ctx.config.coordinator
        self._metrics = CoordinatorMetrics.register(ctx.telemetry)
        self._pool = WorkerPool(
            channel_factory=ctx.channel,
            interval=self._config.health_check_interval,
            timeout=self._config.health_check_timeout,
            max_failures=self._config.max_retries,
        )
        for worker in self._config.workers:
            self._pool.add(worker.id, join_host_port(worker.host, worker.port), worker.weight, worker.tags)
        if "worker" in ctx.local_services:
            local = ctx.config.worker
            self._pool.add(ctx.config.node.id, ctx.local_services["worker"], local.weight, local.tags)
        self._election = LeaderElection(
            ctx.redis,
            node_id=ctx.config.node.id,
            boot_id=ctx.boot_id,
            address=_advertised(ctx.config.node.advertise, self._config.listen),
            ttl=self._config.leader_ttl,
            on_change=self._leadership_changed,
        )
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._metrics.workers_healthy.set_function(lambda: len(self._pool.healthy()))
        service = CoordinatorService(self._election, self._pool, LeaseStore(self._ctx.redis), self._metrics)
        self._server = grpc.aio.server(interceptors=[self._ctx.peer_auth.server_interceptor()])
        coordinator_pb2_grpc.add_CoordinatorServicer_to_server(service, self._server)
        if self._server.add_insecure_port(self._config.listen) == 0:
            raise StartupError(f"[coordinator] listen {self._config.listen!r}: cannot bind (port in use?)")
        await self._server.start()
        self._tasks = [
            asyncio.create_task(_logged(self._pool.run(), "worker health checks"), name="coordinator-pool"),
            asyncio.create_task(_logged(self._election.run(), "leader election"), name="coordinator-election"),
        ]
        await self._pool.wait_first_check(self._config.health_check_timeout + 1)
        log.info("coordinator on %s with %d worker(s) known", self._config.listen, len(self._pool.workers))

    def _leadership_changed(self, leading: bool, epoch: int) -> None:
        self._metrics.is_leader.set(1 if leading else 0)
        if leading:
            self._metrics.leader_epoch.set(epoch)

    async def drain(self, timeout: float) -> None:
        # Admit/Complete calls are short; a grace of a few seconds lets gateways finish their reports.
        if self._server:
            await self._server.stop(grace=min(timeout, 5.0))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._election.release()
        if self._server:
            await self._server.stop(grace=None)
        await self._pool.close()

    def readiness(self) -> tuple[bool, str]:
        healthy = len(self._pool.healthy())
        role = f"leader (epoch {self._election.epoch})" if self._election.is_leader else "standby"
        return True, f"{role}, {healthy}/{len(self._pool.workers)} workers healthy"


def _advertised(advertise: str, listen: str) -> str:
    host, port = split_host_port(listen)
    return join_host_port(advertise or connect_host(host), port)


async def _logged(coro, what: str) -> None:
    """Run a background loop; a crash is logged loudly instead of vanishing with the task."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s crashed", what)
        raise

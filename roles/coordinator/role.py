"""The coordinator role: leader election, the worker pool and the control-plane gRPC service."""

from __future__ import annotations

import asyncio
import logging

from cynode.config import join_host_port
from cynode.errors import CynodeError, FencedError, StartupError
from cynode.redis_conn import RedisConnection
from cynode.redis_tls import redis_options
from cynode.role import Role, RoleContext
from cynode.rpc import coordinator_pb2_grpc
from cynode.rpc.server import RpcServer
from cynode.tasks import BackgroundTasks
from cynode.training_store import TrainingStore

from .dispatcher import Dispatcher
from .leader import LeaderElection
from .metrics import CoordinatorMetrics
from .pool import WorkerPool
from .prompt_cache import PromptCache
from .service import CoordinatorService
from .task_queue import TaskQueue
from .training_jobs import TrainingJobs

log = logging.getLogger(__name__)

ADAPTER_QUICK_S = 20.0  # how long workers are checked quickly after an adapter is published


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
            leader_epoch=lambda: self._election.epoch if self._election.is_leader else 0,
        )
        for worker in self._config.workers:
            self._pool.add(worker.id, join_host_port(worker.host, worker.port), worker.weight, worker.tags)
        self._static_ids = {w.id for w in self._config.workers} | ({ctx.config.node.id} if "worker" in ctx.local_services else set())
        if "worker" in ctx.local_services:
            local = ctx.config.worker
            self._pool.add(ctx.config.node.id, ctx.local_services["worker"], local.weight, local.tags)
        self._election = LeaderElection(
            ctx.redis,
            node_id=ctx.config.node.id,
            boot_id=ctx.boot_id,
            # The address gateways dial: the one gossip publishes, so every view of this node agrees.
            address=ctx.gossip.service_address("coordinator"),
            ttl=self._config.leader_ttl,
            on_change=self._leadership_changed,
        )
        queue_cfg, cache_cfg = self._config.task_queue, self._config.prompt_cache
        self._cache_redis: RedisConnection | None = None
        self._cache: PromptCache | None = None
        if cache_cfg.enabled:
            cache_redis = ctx.redis
            if cache_cfg.redis_url:
                # The same user, password and TLS files as [redis] (a plaintext cache url beside a
                # TLS [redis] is refused when node.toml loads).
                cache_redis = self._cache_redis = RedisConnection(
                    cache_cfg.redis_url, ctx.config.cluster.name, redis_options(ctx.config.redis, cache_cfg.redis_url))
            self._cache = PromptCache(cache_redis, ttl=cache_cfg.ttl, max_size=cache_cfg.max_size)
        self._queue = TaskQueue(ctx.redis, lambda: self._election.epoch, max_size=queue_cfg.max_size,
                                max_retries=queue_cfg.max_retries, cache=self._cache)
        self._dispatcher = Dispatcher(self._queue, self._pool, lease_ttl=queue_cfg.lease_ttl,
                                      is_leader=lambda: self._election.is_leader)
        self._training = TrainingJobs(TrainingStore(ctx.redis), is_leader=lambda: self._election.is_leader,
                                      epoch=lambda: self._election.epoch)
        self._server: RpcServer | None = None
        self._tasks = BackgroundTasks("coordinator")

    async def start(self) -> None:
        if self._cache_redis is not None:
            await self._cache_redis.connect()
        if self._ctx.gossip is not None:
            self._ctx.gossip.add_listener(self._on_member)
            for member in self._ctx.gossip.members_raw():
                self._track(member)
        self._metrics.workers_healthy.set_function(lambda: len(self._pool.healthy()))
        self._metrics.queue_pending.set_function(lambda: self._dispatcher.pending)
        service = CoordinatorService(
            redis=self._ctx.redis, election=self._election, pool=self._pool, queue=self._queue,
            dispatcher=self._dispatcher, cache=self._cache, cache_nondeterministic=self._config.prompt_cache.nondeterministic,
            metrics=self._metrics,
        )
        self._server = self._ctx.rpc_server("coordinator", self._config.listen)
        self._server.add(coordinator_pb2_grpc.add_CoordinatorServicer_to_server, service)
        await self._server.start()
        self._tasks.spawn(self._pool.run(), "worker health checks")
        self._tasks.spawn(self._election.run(), "leader election")
        self._tasks.spawn(self._dispatcher.run(), "dispatcher")
        self._tasks.spawn(self._training.run(), "fine-tuning jobs")
        self._tasks.spawn(self._follow_adapters_forever(), "published adapters")
        await self._pool.wait_first_check(self._config.health_check_timeout + 1)
        log.info("coordinator on %s with %d worker(s) known", self._config.listen, len(self._pool.workers))

    async def _follow_adapters_forever(self, every: float = 1.0) -> None:
        """When an adapter is published, health-check the workers quickly for a while: each serves it
        within a second or two (roles/worker/role.py), and routing should follow at once, gossip or not."""
        store, seen = TrainingStore(self._ctx.redis), None
        while True:
            try:
                adapters = await store.adapters()
                if seen is not None and adapters != seen:
                    self._pool.quicken(ADAPTER_QUICK_S)
                seen = adapters
            except CynodeError as exc:
                log.debug("published adapters: %s", exc.message)
            await asyncio.sleep(every)

    def _on_member(self, event) -> None:
        if getattr(event, "member", None) is None:
            return
        if event.kind in ("dead", "left"):
            meta = event.member.meta
            if "worker" in meta.get("roles", []) and event.member.id not in self._static_ids:
                self._pool.remove(event.member.id)
            if "coordinator" in meta.get("roles", []):
                self._election.hint()  # maybe the leader: look at the lock now rather than later
        else:
            if event.kind == "suspect" and "coordinator" in event.member.meta.get("roles", []):
                self._election.hint()  # a suspected leader may be gone: a standby looks at the lock now
            self._track(event.member)

    def _track(self, member) -> None:
        """A worker found through gossip joins the pool (its health checks decide the rest)."""
        meta = member.meta
        address = meta.get("addr", {}).get("worker")
        if "worker" in meta.get("roles", []) and address and str(member.state) in ("alive", "suspect"):
            self._pool.add(member.id, address, int(meta.get("weight", 100)), meta.get("tags", ()))
            self._pool.models_changed(member.id, str(meta.get("models_rev", "")))

    def _leadership_changed(self, leading: bool, epoch: int) -> None:
        self._metrics.is_leader.set(1 if leading else 0)
        if self._ctx.gossip is not None:
            # Nodes without Redis (workers) answer /v1/cluster/leader from this.
            self._ctx.gossip.publish(leader_epoch=epoch if leading else 0)
        if leading:
            self._metrics.leader_epoch.set(epoch)
            # In-flight counts come back from Redis (and workers' own reports via health checks).
            self._tasks.spawn(self._dispatcher.rebuild(), "lease rebuild")
        else:
            self._dispatcher.step_down(FencedError("leadership lost; ask the new leader"))

    async def begin_drain(self) -> None:
        # Hand leadership over now: a standby leads within its poll interval while we drain.
        leading = self._election.is_leader
        await self._election.resign()
        if leading:
            self._leadership_changed(False, self._election.epoch)

    async def drain(self, timeout: float) -> None:
        # Admit/Complete calls are short; a grace of a few seconds lets gateways finish their reports.
        if self._server:
            await self._server.stop(grace=min(timeout, 5.0))

    async def stop(self) -> None:
        self._dispatcher.step_down(FencedError("this coordinator is shutting down"))
        await self._tasks.close()
        await self._queue.close()
        await self._election.release()
        if self._server:
            await self._server.stop(grace=None)
        await self._pool.close()
        if self._cache_redis is not None:
            await self._cache_redis.close()

    def readiness(self) -> tuple[bool, str]:
        healthy = len(self._pool.healthy())
        role = f"leader (epoch {self._election.epoch})" if self._election.is_leader else "standby"
        return True, f"{role}, {healthy}/{len(self._pool.workers)} workers healthy"



"""The request path in one process: the real coordinator and worker services on the `sim` engine,
over loopback gRPC (or in-process channels) against the test run's Redis, driven by the gateway's
own `Completion`. Time in the sim engine is a `SteppedClock`, so a test decides how many tokens are
out before it kills a worker, and nothing waits on a sleep.

    path = await RequestPath.start(redis_conn, workers=2, transport="grpc")
    completion = path.completion("hello", max_tokens=8)
    text = await path.collect(completion)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import grpc.aio

from cynode.engines.memory_manager import MemoryManager
from cynode.engines.registry import ModelRegistry, sim_spec
from cynode.engines.sim_engine import SimEngine
from cynode.inference import ChatMessage
from cynode.leader_record import epoch_key
from cynode.redis_conn import RedisConnection
from cynode.roles.coordinator.dispatcher import Dispatcher
from cynode.roles.coordinator.leader import LeaderElection
from cynode.roles.coordinator.metrics import CoordinatorMetrics
from cynode.roles.coordinator.pool import WorkerPool
from cynode.roles.coordinator.prompt_cache import PromptCache
from cynode.roles.coordinator.service import CoordinatorService
from cynode.roles.coordinator.task_queue import TaskQueue
from cynode.roles.gateway.completion import Completion
from cynode.roles.gateway.upstream import Upstream
from cynode.roles.worker.metrics import WorkerMetrics
from cynode.roles.worker.service import WorkerService
from cynode.rpc import coordinator_pb2, coordinator_pb2_grpc, worker_pb2_grpc
from cynode.rpc.local import LocalServices
from cynode.rpc.server import RpcServer
from cynode.sampling import SamplingParams
from cynode.tasks import BackgroundTasks
from cynode.telemetry import Telemetry
from daemon_harness import free_port
from fakes import SteppedClock, wait_until

SIM = {"ttft": 0.1, "tokens_per_second": 10.0, "answer_tokens": 20, "context_length": 64}


@dataclass
class Worker:
    id: str
    address: str
    service: WorkerService
    server: RpcServer
    engine: SimEngine | None = None
    alive: bool = True


@dataclass
class RequestPath:
    redis: RedisConnection
    transport: str
    clock: SteppedClock
    local: LocalServices
    telemetry: Telemetry
    election: LeaderElection
    pool: WorkerPool
    queue: TaskQueue
    dispatcher: Dispatcher
    service: CoordinatorService
    coordinator: RpcServer
    coordinator_address: str
    upstream: Upstream
    tasks: BackgroundTasks
    workers: dict[str, Worker] = field(default_factory=dict)
    channels: list = field(default_factory=list)

    @classmethod
    async def start(cls, redis: RedisConnection, *, workers: int = 2, transport: str = "grpc",
                    max_size: int = 100, worker_capacity: int = 4) -> "RequestPath":
        clock, local, telemetry = SteppedClock(), LocalServices(), Telemetry("request-path")
        tasks = BackgroundTasks("request-path")

        def channel(address: str):
            if transport == "local" and (found := local.channel(address)):
                return found
            made = grpc.aio.insecure_channel(address)
            path.channels.append(made)
            return made

        address = f"127.0.0.1:{free_port()}"
        election = LeaderElection(redis, node_id="coordinator", boot_id=uuid.uuid4().hex[:8], address=address, ttl=3.0)
        pool = WorkerPool(channel_factory=channel, interval=0.2, timeout=1.0, max_failures=1)
        cache = PromptCache(redis, ttl=60, max_size=100)
        queue = TaskQueue(redis, lambda: election.epoch, max_size=max_size, max_retries=3, cache=cache)
        dispatcher = Dispatcher(queue, pool, lease_ttl=30.0, is_leader=lambda: election.is_leader)
        service = CoordinatorService(redis=redis, election=election, pool=pool, queue=queue, dispatcher=dispatcher,
                                     cache=cache, cache_nondeterministic=False,
                                     metrics=CoordinatorMetrics.register(telemetry))
        server = RpcServer("coordinator", address, local=local, addresses=(address,))
        server.add(coordinator_pb2_grpc.add_CoordinatorServicer_to_server, service)
        await server.start()
        path = cls(redis, transport, clock, local, telemetry, election, pool, queue, dispatcher, service, server,
                   address, Upstream(channel, redis, ""), tasks)
        metrics = WorkerMetrics.register(telemetry)
        for i in range(workers):
            await path.add_worker(f"w{i}", metrics, worker_capacity)
        tasks.spawn(election.run(), "election")
        tasks.spawn(dispatcher.run(interval=0.05), "dispatcher")
        tasks.spawn(pool.run(), "pool")
        tasks.spawn(path.upstream.leases.run(), "leases")
        await wait_until(lambda: election.is_leader, what="leadership")
        await wait_until(lambda: len(pool.healthy()) == workers, what="healthy workers")
        return path

    async def add_worker(self, worker_id: str, metrics: WorkerMetrics, capacity: int) -> Worker:
        address = f"127.0.0.1:{free_port()}"
        holder: dict[str, SimEngine] = {}

        def make_engine(spec):
            holder["engine"] = SimEngine(spec.id, clock=self.clock, max_concurrency=capacity, **SIM)
            return holder["engine"]

        manager = MemoryManager(ModelRegistry([sim_spec()], builtin=False), budget_bytes=1 << 30,
                                factory=make_engine, per_model_concurrency=capacity)
        await manager.load("sim")
        service = WorkerService(worker_id, "sim", manager, metrics)
        server = RpcServer("worker", address, local=self.local, addresses=(address,))
        server.add(worker_pb2_grpc.add_WorkerServicer_to_server, service)
        await server.start()
        worker = self.workers[worker_id] = Worker(worker_id, address, service, server, holder["engine"])
        self.pool.add(worker_id, address, 100)
        return worker

    def completion(self, content: str = "hello", *, model: str = "sim", idempotency_key: str = "",
                   cache_mode: int = coordinator_pb2.CACHE_NO_CACHE, max_attempts: int = 3, **sampling) -> Completion:
        request_id = uuid.uuid4().hex
        return Completion(self.upstream, model=model, messages=(ChatMessage("user", content),),
                          sampling=SamplingParams(temperature=0.0, **sampling), request_id=request_id,
                          idempotency_key=idempotency_key or request_id, priority=0, key_name="test",
                          cache_mode=cache_mode, timeout=30.0, max_attempts=max_attempts)

    async def collect(self, completion: Completion) -> str:
        """The whole answer, with time running freely."""
        self.clock.run_free()
        return "".join([piece async for piece in completion.deltas()])

    async def settled(self) -> None:
        """Every report the gateway sent off the response path has been answered."""
        await wait_until(lambda: not self.upstream.reports, what="the gateway's reports")

    def streaming_worker(self) -> Worker:
        """The one worker whose engine has a request running."""
        busy = [w for w in self.workers.values() if w.alive and w.engine.active_requests]
        assert len(busy) == 1, f"expected one busy worker, found {[w.id for w in busy]}"
        return busy[0]

    async def kill(self, worker: Worker) -> None:
        """The worker's process dies: its server goes away with every stream on it."""
        worker.alive = False
        await worker.server.stop(None)

    async def bump_epoch(self) -> int:
        """A leader failover: the lock is given up and taken again, under the next epoch."""
        before = self.election.epoch
        await self.election.release()
        self.election.hint()
        await wait_until(lambda: self.election.is_leader and self.election.epoch > before, what="a new epoch")
        return self.election.epoch

    def coordinator_stub(self) -> coordinator_pb2_grpc.CoordinatorStub:
        return coordinator_pb2_grpc.CoordinatorStub(self.upstream._channel(self.coordinator_address))

    def requests(self, status: str) -> float:
        return self.telemetry.registry.get_sample_value("coordinator_inference_requests_total", {"status": status}) or 0.0

    async def stop(self) -> None:
        await self.tasks.close()
        await self.upstream.close()
        for worker in self.workers.values():
            await worker.server.stop(None)
        await self.coordinator.stop(None)
        await self.queue.close()
        await self.pool.close()
        await self.local.close()
        for channel in self.channels:
            await channel.close()
        await self.redis.client.delete(epoch_key(self.redis))

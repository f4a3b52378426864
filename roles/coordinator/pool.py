"""The worker pool: health checks over gRPC and smooth weighted round-robin among healthy workers.

Workers come from `[[coordinator.workers]]`, the node's own worker, and (with gossip) peers.
A worker is healthy while its Health call answers `ready` within `health_check_timeout`; after
`max_retries` failures in a row it gets no assignments until a check succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc
import grpc.aio

from cynode.rpc import worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    id: str
    address: str
    weight: int
    tags: tuple[str, ...] = ()
    channel: grpc.aio.Channel | None = None
    healthy: bool = False
    failures: int = 0
    models: dict[str, tuple[str, ...]] = field(default_factory=dict)  # id -> aliases
    context_lengths: dict[str, int] = field(default_factory=dict)
    active: int = 0  # engine's own count, from the last health check
    capacity: int = 1
    leased: int = 0  # assignments made since, not yet completed
    current: float = 0.0  # smooth weighted round-robin accumulator

    def serves(self, model: str) -> str | None:
        """The canonical id if this worker serves `model` (by id or alias)."""
        for model_id, aliases in self.models.items():
            if model == model_id or model in aliases:
                return model_id
        return None

    @property
    def effective_weight(self) -> float:
        # Configured weight scaled by free capacity, so a busy worker gets proportionally less.
        free = max(self.capacity - max(self.active, self.leased), 0) / max(self.capacity, 1)
        return self.weight * (0.1 + 0.9 * free)


class WorkerPool:
    def __init__(
        self,
        *,
        channel_factory: Callable[[str], grpc.aio.Channel],
        interval: float,
        timeout: float,
        max_failures: int,
    ) -> None:
        self._channel_factory = channel_factory
        self._interval = interval
        self._timeout = timeout
        self._max_failures = max(1, max_failures)
        self.workers: dict[str, WorkerState] = {}
        self._checked = asyncio.Event()

    def add(self, worker_id: str, address: str, weight: int, tags: Iterable[str] = ()) -> None:
        if worker_id not in self.workers:
            self.workers[worker_id] = WorkerState(worker_id, address, weight, tuple(tags), self._channel_factory(address))

    def healthy(self) -> list[WorkerState]:
        return [w for w in self.workers.values() if w.healthy]

    def models(self) -> dict[str, tuple[tuple[str, ...], int]]:
        """Every model a healthy worker serves: id -> (aliases, context length)."""
        found: dict[str, tuple[tuple[str, ...], int]] = {}
        for worker in self.healthy():
            for model_id, aliases in worker.models.items():
                found.setdefault(model_id, (aliases, worker.context_lengths.get(model_id, 0)))
        return found

    def knows(self, model: str) -> bool:
        return any(w.serves(model) for w in self.workers.values())

    def pick(self, model: str, exclude: Iterable[str] = ()) -> tuple[WorkerState, str] | None:
        """Smooth weighted round-robin (nginx's) over healthy workers serving `model`."""
        excluded = set(exclude)
        candidates = [(w, w.serves(model)) for w in self.healthy() if w.id not in excluded]
        candidates = [(w, m) for w, m in candidates if m]
        if not candidates:
            return None
        total = 0.0
        for worker, _ in candidates:
            worker.current += worker.effective_weight
            total += worker.effective_weight
        chosen, model_id = max(candidates, key=lambda c: c[0].current)
        chosen.current -= total
        return chosen, model_id

    async def wait_first_check(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._checked.wait(), timeout)

    async def run(self) -> None:
        """Check every worker each interval, until cancelled."""
        while True:
            await asyncio.gather(*(self._check(w) for w in list(self.workers.values())))
            self._checked.set()
            await asyncio.sleep(self._interval if self.healthy() else min(self._interval, 1.0))

    async def _check(self, worker: WorkerState) -> None:
        stub = worker_pb2_grpc.WorkerStub(worker.channel)
        try:
            reply = await stub.Health(worker_pb2.HealthRequest(), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            self._failed(worker, f"{exc.code().name}: {exc.details()}")
            return
        if not reply.ready:
            self._failed(worker, f"not ready: {reply.detail}")
            return
        if not worker.healthy:
            log.info("worker %s (%s) is healthy", worker.id, worker.address)
        worker.healthy, worker.failures = True, 0
        worker.models = {m.id: tuple(m.aliases) for m in reply.models}
        worker.context_lengths = {m.id: m.context_length for m in reply.models}
        worker.active, worker.capacity = reply.active_requests, max(reply.max_concurrency, 1)

    def _failed(self, worker: WorkerState, reason: str) -> None:
        worker.failures += 1
        if worker.healthy and worker.failures >= self._max_failures:
            worker.healthy = False
            log.warning("worker %s (%s) is unhealthy after %d failed checks: %s", worker.id, worker.address, worker.failures, reason)
        elif not worker.healthy:
            log.debug("worker %s not healthy yet: %s", worker.id, reason)

    async def close(self) -> None:
        for worker in self.workers.values():
            if worker.channel is not None:
                await worker.channel.close()

"""The worker pool: health checks over gRPC, circuit breakers, and the choice of a worker.

Workers come from `[[coordinator.workers]]`, the node's own worker, and (with gossip) peers.
A worker is healthy while its Health call answers `ready` within `health_check_timeout`; after
`max_retries` failures in a row it gets no assignments until a check succeeds again. Request
failures feed a circuit breaker per worker; an open breaker also keeps the worker out.

Choice: among healthy workers with a closed (or probing) breaker, serving the model and with a free
slot, prefer the one the prompt prefix hashes to (its KV/prefix cache is warm) unless it is much
busier than the least busy candidate; otherwise smooth weighted round-robin (nginx's), weighted by
configured weight and free capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc.aio

from cynode.errors import CynodeError
from cynode.rpc import worker_pb2, worker_pb2_grpc
from cynode.rpc.errors import rpc_errors
from cynode.tasks import BackgroundTasks

from .breaker import BreakerSettings, CircuitBreaker

log = logging.getLogger(__name__)

QUICK_EVERY_S = 0.5  # the health-check period while the pool is quickened (an adapter was just published)


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
    versions: dict[str, str] = field(default_factory=dict)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    active: int = 0  # engine's own count, from the last health check
    capacity: int = 1
    leased: int = 0  # assignments made since, not yet completed
    current: float = 0.0  # smooth weighted round-robin accumulator
    models_rev: str = ""  # the worker's gossiped models revision its last health check answered for

    def serves(self, model: str) -> str | None:
        """The canonical id if this worker serves `model` (by id or alias)."""
        for model_id, aliases in self.models.items():
            if model == model_id or model in aliases:
                return model_id
        return None

    @property
    def load(self) -> float:
        """Fraction of slots in use, by the worker's own count or our leases, whichever is higher."""
        return max(self.active, self.leased) / max(self.capacity, 1)

    @property
    def has_room(self) -> bool:
        return self.leased < self.capacity

    @property
    def effective_weight(self) -> float:
        # Configured weight scaled by free capacity, so a busy worker gets proportionally less.
        return self.weight * (0.1 + 0.9 * max(0.0, 1.0 - self.load))


def _in_backoff(channel) -> bool:
    """A network channel waiting out gRPC's reconnect backoff (in-process channels never are)."""
    get_state = getattr(channel, "get_state", None)
    return get_state is not None and get_state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE


class WorkerPool:
    def __init__(
        self,
        *,
        channel_factory: Callable[[str], grpc.aio.Channel],
        interval: float,
        timeout: float,
        max_failures: int,
        breaker: BreakerSettings = BreakerSettings(),
        clock: Callable[[], float] | None = None,
        leader_epoch: Callable[[], int] = lambda: 0,
    ) -> None:
        """`leader_epoch`: this coordinator's epoch while it leads, else 0; every health check tells
        the worker, which then refuses assignments of older leaders (fencing)."""
        self._leader_epoch = leader_epoch
        self._channel_factory = channel_factory
        self._interval = interval
        self._timeout = timeout
        self._max_failures = max(1, max_failures)
        self._breaker = breaker
        self._clock = clock
        self.workers: dict[str, WorkerState] = {}
        self._checked = asyncio.Event()
        self._background = BackgroundTasks("worker-pool")  # channel closes, out-of-turn checks
        self._rechecking: set[str] = set()
        self._quick_until = 0.0  # checks every QUICK_EVERY_S until then (loop.time())
        self._wake = asyncio.Event()

    def add(self, worker_id: str, address: str, weight: int, tags: Iterable[str] = ()) -> None:
        existing = self.workers.get(worker_id)
        if existing is not None and existing.address != address:  # restarted elsewhere: new channel
            self.workers.pop(worker_id)
            self._close_channel(existing)
        elif existing is not None and not existing.healthy and _in_backoff(existing.channel):
            # Gossip says it is back (restarted in place) while our channel sits in reconnect backoff
            # (up to seconds): dial it afresh so its capacity returns at the next health check.
            self._close_channel(existing)
            existing.channel = self._channel_factory(address)
        if worker_id not in self.workers:
            breaker = CircuitBreaker(self._breaker, self._clock) if self._clock else CircuitBreaker(self._breaker)
            self.workers[worker_id] = WorkerState(worker_id, address, weight, tuple(tags), self._channel_factory(address),
                                                  breaker=breaker)

    def models_changed(self, worker_id: str, revision: str) -> None:
        """Gossip says the worker's models are now at `revision` (a model or adapter added, removed or
        republished): check it now rather than at the next interval, so what it just added is routed
        to within a gossip round, not up to `health_check_interval` later."""
        worker = self.workers.get(worker_id)
        if worker is None or not revision or revision == worker.models_rev or worker_id in self._rechecking:
            return
        self._rechecking.add(worker_id)
        self._background.spawn(self._recheck(worker, revision), f"check {worker_id} for new models")

    async def _recheck(self, worker: WorkerState, revision: str) -> None:
        try:
            if await self._check(worker):  # the worker published the revision before gossip carried it
                worker.models_rev = revision
        finally:
            self._rechecking.discard(worker.id)

    def quicken(self, for_s: float) -> None:
        """Check every worker each QUICK_EVERY_S for the next `for_s` seconds: something every worker
        acts on (an adapter published in Redis) just changed, and the pool should see the result
        within a fraction of a second, with or without gossip (static workers)."""
        self._quick_until = max(self._quick_until, asyncio.get_running_loop().time() + for_s)
        self._wake.set()

    def remove(self, worker_id: str) -> None:
        """Gossip says the worker is dead or left: it gets nothing more (static workers stay checked)."""
        worker = self.workers.pop(worker_id, None)
        if worker is not None:
            self._close_channel(worker)

    def _close_channel(self, worker: WorkerState) -> None:
        if worker.channel is not None:
            self._background.spawn(worker.channel.close(), f"close channel to {worker.id}")

    def healthy(self) -> list[WorkerState]:
        return [w for w in self.workers.values() if w.healthy]

    def models(self) -> dict[str, tuple[tuple[str, ...], int, str]]:
        """Every model a healthy worker serves: id -> (aliases, context length, version)."""
        found: dict[str, tuple[tuple[str, ...], int, str]] = {}
        for worker in self.healthy():
            for model_id, aliases in worker.models.items():
                found.setdefault(model_id, (aliases, worker.context_lengths.get(model_id, 0), worker.versions.get(model_id, "")))
        return found

    def resolve(self, model: str) -> tuple[str, str] | None:
        """(canonical id, version) of `model` (an id or alias) if any worker has served it."""
        for worker in self.workers.values():
            model_id = worker.serves(model)
            if model_id:
                return model_id, worker.versions.get(model_id, "")
        return None

    def candidates(self, model: str, exclude: Iterable[str] = ()) -> list[WorkerState]:
        """Workers that could take a request for `model` right now."""
        excluded = set(exclude)
        return [w for w in self.healthy()
                if w.id not in excluded and w.serves(model) and w.has_room and w.breaker.allows()]

    def pick(self, model: str, exclude: Iterable[str] = (), prefix: str = "") -> tuple[WorkerState, str] | None:
        """The worker for the next request for `model`, or None if none has room."""
        candidates = self.candidates(model, exclude)
        if not candidates:
            return None
        chosen = _affine(candidates, prefix) if prefix else None
        if chosen is None:
            chosen = self._round_robin(candidates)
        chosen.breaker.on_assign()
        return chosen, chosen.serves(model) or model

    def _round_robin(self, candidates: list[WorkerState]) -> WorkerState:
        total = 0.0
        for worker in candidates:
            worker.current += worker.effective_weight
            total += worker.effective_weight
        chosen = max(candidates, key=lambda w: w.current)
        chosen.current -= total
        return chosen

    async def wait_first_check(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._checked.wait()

    async def run(self) -> None:
        """Check every worker each interval, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.gather(*(self._check(w) for w in list(self.workers.values())))
            self._checked.set()
            pause = self._interval if self.healthy() else min(self._interval, 1.0)
            if loop.time() < self._quick_until:
                pause = min(pause, QUICK_EVERY_S)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    async def _check(self, worker: WorkerState) -> bool:
        """One health check; True when the worker answered ready."""
        stub = worker_pb2_grpc.WorkerStub(worker.channel)
        try:
            with rpc_errors(f"worker {worker.id}"):
                reply = await stub.Health(worker_pb2.HealthRequest(leader_epoch=self._leader_epoch()), timeout=self._timeout)
        except CynodeError as exc:
            self._failed(worker, exc.message)
            return False
        if not reply.ready:
            self._failed(worker, f"not ready: {reply.detail}")
            return False
        if not worker.healthy:
            log.info("worker %s (%s) is healthy", worker.id, worker.address)
        worker.healthy, worker.failures = True, 0
        worker.models = {m.id: tuple(m.aliases) for m in reply.models}
        worker.context_lengths = {m.id: m.context_length for m in reply.models}
        worker.versions = {m.id: m.version for m in reply.models}
        worker.active, worker.capacity = reply.active_requests, max(reply.max_concurrency, 1)
        return True

    def _failed(self, worker: WorkerState, reason: str) -> None:
        worker.failures += 1
        if worker.healthy and worker.failures >= self._max_failures:
            worker.healthy = False
            log.warning("worker %s (%s) is unhealthy after %d failed checks: %s", worker.id, worker.address, worker.failures, reason)
        elif not worker.healthy:
            log.debug("worker %s not healthy yet: %s", worker.id, reason)

    async def close(self) -> None:
        await self._background.wait(timeout=5.0)
        for worker in self.workers.values():
            if worker.channel is not None:
                await worker.channel.close()


# A preferred worker keeps its prefix traffic until it is this much busier than the least busy one.
AFFINITY_SLACK = 0.5


def _affine(candidates: list[WorkerState], prefix: str) -> WorkerState | None:
    """Rendezvous hashing of the prompt prefix over the candidates, with a load-aware fallback."""
    preferred = max(candidates, key=lambda w: hashlib.blake2b(f"{prefix}|{w.id}".encode(), digest_size=8).digest())
    least = min(w.load for w in candidates)
    return preferred if preferred.load - least <= AFFINITY_SLACK else None

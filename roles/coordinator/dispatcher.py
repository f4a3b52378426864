"""The leader's dispatch: which worker runs a task, now or when a slot frees up.

An Admit that finds a worker free and nothing waiting ahead of it takes that worker at once
(`reserve`, then the queue's admit script leases the task to it in the same round trip). Otherwise
the gateway waits inside `Admit` for its task (a `Waiter`); the loop walks the queue in priority
order and gives each task that has a waiter the worker the pool picks, claiming it in Redis under a
lease first. Tasks nobody waits for (their gateway died, or the client left while we were failing
over) are cancelled after `abandon_after` seconds. Expired leases are reaped here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from cynode.errors import FencedError, UnavailableError

from .pool import WorkerPool, WorkerState
from .task_queue import TaskQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grant:
    task_id: str
    worker: WorkerState
    model_id: str
    lease_id: str
    attempt: int
    lease_deadline_ms: int


@dataclass
class Reservation:
    """A slot on `worker` held for one Admit while its admit script runs."""

    worker: WorkerState
    model_id: str
    lease_id: str


@dataclass
class Waiter:
    model: str
    exclude: tuple[str, ...]
    prefix: str
    users: int = 0  # Admit calls waiting on it (a gateway may ask again while its first call waits)
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Dispatcher:
    def __init__(self, queue: TaskQueue, pool: WorkerPool, *, lease_ttl: float, abandon_after: float = 30.0,
                 is_leader: Callable[[], bool], clock: Callable[[], float] = time.monotonic) -> None:
        self._queue = queue
        self._pool = pool
        self.lease_ttl = lease_ttl
        self._abandon_after = abandon_after
        self._is_leader = is_leader
        self._clock = clock
        self._waiters: dict[str, Waiter] = {}
        self._orphans: dict[str, float] = {}  # task id -> first time seen without a waiter
        self._wake = asyncio.Event()
        self.leases: dict[str, tuple[str, str]] = {}  # lease id -> (task id, worker id)
        self.pending = 0

    def wake(self) -> None:
        self._wake.set()

    def lease_deadline_ms(self) -> int:
        return int((time.time() + self.lease_ttl) * 1000)

    def reserve(self, model: str, exclude: tuple[str, ...], prefix: str) -> Reservation | None:
        """Hold a free slot for a new task, if a worker has one and no task waits for a slot."""
        if self._waiters:
            return None  # others are waiting (possibly for this model): the queue decides the order
        picked = self._pool.pick(model, exclude, prefix)
        if picked is None:
            return None
        worker, model_id = picked
        worker.leased += 1
        return Reservation(worker, model_id, uuid.uuid4().hex)

    def confirm(self, reservation: Reservation, task_id: str) -> Grant:
        """The admit script leased the task on the reserved slot."""
        self.leases[reservation.lease_id] = (task_id, reservation.worker.id)
        return Grant(task_id, reservation.worker, reservation.model_id, reservation.lease_id, 1,
                     self.lease_deadline_ms())

    def unreserve(self, reservation: Reservation | None) -> None:
        if reservation is not None:
            reservation.worker.leased = max(0, reservation.worker.leased - 1)
            self.wake()

    async def wait(self, task_id: str, model: str, exclude: tuple[str, ...], prefix: str, timeout: float) -> Grant:
        """Wait for `task_id` to be handed a worker; raises TimeoutError or the reason it never will."""
        waiter = self._waiters.get(task_id)
        if waiter is None or waiter.future.done():
            waiter = self._waiters[task_id] = Waiter(model, exclude, prefix)
        self._orphans.pop(task_id, None)
        waiter.users += 1
        self.wake()
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiter.future)
        finally:
            # Done, timed out or the caller went away: once nobody waits, the task is an orphan
            # again and will not be handed to a worker nobody listens to.
            waiter.users -= 1
            if waiter.users == 0 and self._waiters.get(task_id) is waiter:
                del self._waiters[task_id]

    def abandon(self, task_id: str, reason: BaseException) -> None:
        waiter = self._waiters.pop(task_id, None)
        if waiter and not waiter.future.done():
            waiter.future.set_exception(reason)

    def step_down(self, reason: BaseException) -> None:
        """Leadership is gone: every waiting gateway must ask the new leader."""
        for task_id in list(self._waiters):
            self.abandon(task_id, reason)
        self.leases.clear()

    async def run(self, interval: float = 0.25) -> None:
        last_reap = last_scan = 0.0
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event fires, and this loop would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            if not self._is_leader():
                continue
            try:
                if self._clock() - last_reap >= 1.0:
                    last_reap = self._clock()
                    for task_id, state in await self._queue.reap():
                        log.warning("lease of task %s expired: %s", task_id, state)
                        self._forget_task(task_id)
                # A wake with nobody waiting (a lease released) needs no scan; orphans are found
                # by the scan every interval.
                if self._waiters or self._clock() - last_scan >= interval:
                    last_scan = self._clock()
                    await self._dispatch()
            except FencedError as exc:
                log.warning("dispatch refused: %s", exc)
            except UnavailableError as exc:
                log.warning("dispatch paused: %s", exc.message)

    async def _dispatch(self) -> None:
        pending = await self._queue.pending()
        self.pending = len(pending)
        now = self._clock()
        for task_id in set(self._orphans) - set(pending):
            del self._orphans[task_id]
        for task_id in pending:
            waiter = self._waiters.get(task_id)
            if waiter is None:
                first = self._orphans.setdefault(task_id, now)
                if now - first > self._abandon_after and await self._queue.cancel(task_id, "nobody waited for it"):
                    log.info("task %s abandoned: no gateway waited for it for %.0fs", task_id, self._abandon_after)
                    del self._orphans[task_id]
                continue
            if waiter.future.done():
                continue
            picked = self._pool.pick(waiter.model, waiter.exclude, waiter.prefix)
            if picked is None:
                continue  # no room for this model; later tasks for other models may still go
            worker, model_id = picked
            lease_id = uuid.uuid4().hex
            worker.leased += 1  # held across the claim, so no Admit takes the same slot meanwhile
            attempt = await self._queue.claim(task_id, worker.id, lease_id, self.lease_ttl)
            gone = waiter.future.done() or self._waiters.get(task_id) is not waiter
            if attempt is None or gone:
                worker.leased -= 1
                if attempt is not None:  # the waiter went away during the claim: give the task back
                    await self._queue.fail(task_id, lease_id, "its gateway went away")
                continue
            self.leases[lease_id] = (task_id, worker.id)
            waiter.future.set_result(Grant(task_id, worker, model_id, lease_id, attempt, self.lease_deadline_ms()))

    def release(self, lease_id: str) -> str | None:
        """Forget a lease locally; returns the worker id it was on."""
        entry = self.leases.pop(lease_id, None)
        if entry is None:
            return None
        worker = self._pool.workers.get(entry[1])
        if worker is not None:
            worker.leased = max(0, worker.leased - 1)
        self.wake()
        return entry[1]

    def _forget_task(self, task_id: str) -> None:
        for lease_id, (leased_task, _) in list(self.leases.items()):
            if leased_task == task_id:
                self.release(lease_id)

    async def rebuild(self) -> None:
        """After winning leadership: lease counts per worker from what Redis says is in flight."""
        self.leases.clear()
        for worker in self._pool.workers.values():
            worker.leased = 0
        for task in await self._queue.get_many(await self._queue.inflight()):
            if task is not None and task.worker in self._pool.workers:
                self._pool.workers[task.worker].leased += 1
                self.leases[task.lease] = (task.id, task.worker)
        self.wake()

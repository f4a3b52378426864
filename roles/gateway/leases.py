"""Keeps the leases of running streams alive, all from one loop.

The coordinator leases each assignment for `[coordinator.task_queue] lease_ttl`; a stream that
outlives a third of that gets a Heartbeat, so a leader failover never lets a live stream's lease
expire. Short requests, the common case, finish before their first heartbeat is due and cost none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cynode.errors import CynodeError
from cynode.rpc import coordinator_pb2

log = logging.getLogger(__name__)

TICK_S = 0.25


@dataclass
class _Held:
    task_id: str
    lease_id: str
    deadline: float  # unix seconds
    due: float


class LeaseKeeper:
    def __init__(self, call: Callable[..., Awaitable], clock: Callable[[], float] = time.time) -> None:
        """`call(method, request, patience=...)` reaches the coordinator leader."""
        self._call = call
        self._clock = clock
        self._held: dict[str, _Held] = {}

    def hold(self, task_id: str, lease_id: str, deadline_ms: int) -> None:
        deadline = deadline_ms / 1000
        now = self._clock()
        self._held[lease_id] = _Held(task_id, lease_id, deadline, now + max(0.0, deadline - now) / 3)

    def release(self, lease_id: str) -> None:
        self._held.pop(lease_id, None)

    def __len__(self) -> int:
        return len(self._held)

    async def run(self) -> None:
        """Heartbeat each lease at a third of its remaining life, until cancelled."""
        while True:
            await asyncio.sleep(TICK_S)
            now = self._clock()
            due = [held for held in self._held.values() if held.due <= now]
            if due:
                await asyncio.gather(*(self._beat(held) for held in due))

    async def _beat(self, held: _Held) -> None:
        remaining = max(1.0, held.deadline - self._clock())
        try:
            reply = await self._call("Heartbeat", coordinator_pb2.HeartbeatRequest(
                task_id=held.task_id, lease_id=held.lease_id), patience=remaining / 2)
        except CynodeError as exc:
            log.warning("heartbeat for task %s failed: %s", held.task_id, exc.message)
            held.due = self._clock() + TICK_S * 4
            return
        if not reply.ok:
            log.warning("lease of task %s is gone; the coordinator requeued it", held.task_id)
            self._held.pop(held.lease_id, None)
            return
        now = self._clock()
        held.deadline = reply.lease_deadline_ms / 1000
        held.due = now + max(TICK_S, (held.deadline - now) / 3)

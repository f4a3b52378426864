"""A first-in-first-out admission gate whose limit can change while requests wait.

    gate = AdmissionGate(limit=8)
    await gate.acquire()      # waits, in arrival order, while `limit` holders are inside
    ...
    gate.release()
    gate.set_limit(48)        # the engine said how many it batches: waiters go in at once

The MemoryManager keeps one per model: until the model is loaded its limit is provisional (the
operator's ceiling or DEFAULT_CONCURRENCY); once the engine has started it is the engine's own
capacity under that ceiling. Lowering the limit never evicts a holder; it only stops new ones.
"""

from __future__ import annotations

import asyncio
import collections

DEFAULT_CONCURRENCY = 8  # before an engine says its capacity (or for one that cannot say)


class AdmissionGate:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.inside = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in self._waiters)

    async def acquire(self) -> None:
        if self.inside < self.limit and not self._waiters:
            self.inside += 1
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # let in just as the waiter went away: pass the place on
            else:
                self._waiters.remove(future)
            raise

    def release(self) -> None:
        self.inside -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.inside < self.limit:
            future = self._waiters.popleft()
            if not future.done():
                self.inside += 1
                future.set_result(None)

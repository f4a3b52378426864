"""Test doubles shared across tests."""

from __future__ import annotations


class FakeClock:
    """A clock tests move by hand: call it for the time, add to `now` to pass time."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SteppedClock:
    """The sim engine's clock (`now`, `sleep`), moved only by the test: a sleeper wakes when `advance`
    passes its time, or at once after `run_free`. Lets a test say exactly how many tokens are out."""

    def __init__(self) -> None:
        self.time = 0.0
        self.free = False
        self._sleepers: list[tuple[float, int, object]] = []
        self._count = 0

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        import asyncio
        import heapq

        if self.free or seconds <= 0:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        self._count += 1
        heapq.heappush(self._sleepers, (self.time + seconds, self._count, future))
        await future

    @property
    def sleeping(self) -> int:
        """How many sleepers wait for `advance`: a stream is due a token only once it sleeps here."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    def advance(self, seconds: float) -> None:
        import heapq

        self.time += seconds
        while self._sleepers and self._sleepers[0][0] <= self.time + 1e-9:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    def run_free(self) -> None:
        """From now on every sleep returns at once (and the ones waiting wake now)."""
        self.free = True
        for _, _, future in self._sleepers:
            if not future.done():
                future.set_result(None)
        self._sleepers.clear()


async def wait_until(predicate, timeout: float = 30.0, what: str = "a condition"):
    """Yield to the event loop until `predicate()` is true; fail naming `what` after `timeout` s."""
    import asyncio

    async with asyncio.timeout(timeout):
        while not (value := predicate()):
            await asyncio.sleep(0.005)
    return value

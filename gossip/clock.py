"""Time for the gossip core: a `Clock` to read, a `TimerQueue` of the core's own deadlines, and a
discrete-event `SimScheduler` that lets a whole cluster run on simulated time.

The protocol core never sleeps and never reads the system clock itself: it asks its `Clock` for
`now()` and exposes `next_deadline()`; whoever drives it (the asyncio `GossipNode`, a unit test, the
simulator) calls `tick()` when that time has come.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol


class Clock(Protocol):
    """A monotonic source of seconds. Must be cheap: the core calls it on every packet."""

    def now(self) -> float: ...


class MonotonicClock:
    """The real clock (`time.monotonic`)."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that only moves when told to (unit tests)."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds
        return self._now

    def set(self, when: float) -> None:
        if when < self._now:
            raise ValueError("time does not go backwards")
        self._now = when


class Timer:
    """A handle to one scheduled callback; `cancel()` is O(1) (the entry is skipped when popped)."""

    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class TimerQueue:
    """The core's deadlines in one heap. Not thread-safe; the core is driven from one thread."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(when, callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def next_deadline(self) -> float:
        """When the earliest live timer is due; +inf when none is."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else float("inf")

    def run_due(self, now: float) -> int:
        """Run every timer due at `now`, in deadline order (timers they add that are due run too)."""
        heap = self._heap
        ran = 0
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            timer.cancelled = True
            timer.callback(*timer.args)
            ran += 1
        return ran

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)


class Scheduler(Protocol):
    """What the in-memory network needs from time: the simulator or the asyncio loop."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Any: ...


class SimScheduler:
    """A discrete-event scheduler: one heap of (time, seq, callback) for a whole simulated cluster.

    Simulated time jumps from one event to the next, so an idle hour costs nothing and a busy
    second costs only the work done in it. Ties run in the order they were scheduled, which keeps
    runs with the same seed identical.
    """

    __slots__ = ("_now", "_heap", "_seq", "events_run")

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, Callable[..., Any], tuple]] = []
        self._seq = itertools.count()
        self.events_run = 0

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> None:
        if when < self._now:
            when = self._now
        heapq.heappush(self._heap, (when, next(self._seq), callback, args))

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> None:
        self.call_at(self._now + delay, callback, *args)

    def run_until(self, until: float) -> None:
        """Run every event due up to `until`, then leave the clock at `until`."""
        heap = self._heap
        pop = heapq.heappop
        ran = 0
        while heap and heap[0][0] <= until:
            when, _, callback, args = pop(heap)
            self._now = when
            callback(*args)
            ran += 1
        self.events_run += ran
        if until > self._now:
            self._now = until

    def run_for(self, seconds: float) -> None:
        self.run_until(self._now + seconds)

    def pending(self) -> int:
        return len(self._heap)


class AsyncioScheduler:
    """`Scheduler` on the running asyncio loop (the in-memory network used under real time)."""

    __slots__ = ("_loop",)

    def __init__(self, loop: Any) -> None:
        self._loop = loop

    def now(self) -> float:
        return self._loop.time()

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Any:
        return self._loop.call_at(when, callback, *args)

"""A circuit breaker per worker, sans-IO: stepped by the outcomes it is told and a clock.

closed    -> requests flow; outcomes land in a sliding time window. When the window holds at least
             `min_requests` outcomes and the failure rate reaches `failure_rate`, the breaker opens.
open      -> the worker gets nothing for `open_for` seconds.
half_open -> then up to `probes` requests are let through; one success closes the breaker (and
             clears the window), one failure opens it again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class BreakerSettings:
    window: float = 60.0
    min_requests: int = 5
    failure_rate: float = 0.5
    open_for: float = 10.0
    probes: int = 1


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings = BreakerSettings(), clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._failures = 0  # failures among _outcomes, kept as they come and go (O(1) per outcome)
        self._state = CLOSED
        self._opened_at = 0.0
        self._probes_out = 0

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.settings.open_for:
            self._state, self._probes_out = HALF_OPEN, 0
        return self._state

    def allows(self) -> bool:
        """May a request go to this worker now? (Does not reserve a probe; see `on_assign`.)"""
        state = self.state
        return state == CLOSED or (state == HALF_OPEN and self._probes_out < self.settings.probes)

    def on_assign(self) -> None:
        if self.state == HALF_OPEN:
            self._probes_out += 1

    def record(self, ok: bool) -> None:
        now = self._clock()
        state = self.state
        if state == HALF_OPEN:
            if ok:
                self._state = CLOSED
                self._outcomes.clear()
                self._failures = 0
            else:
                self._trip(now)
            return
        if state == OPEN:
            return  # a late report from before the trip changes nothing
        self._outcomes.append((now, ok))
        self._failures += not ok
        while self._outcomes and now - self._outcomes[0][0] > self.settings.window:
            self._failures -= not self._outcomes.popleft()[1]
        if (len(self._outcomes) >= self.settings.min_requests
                and self._failures / len(self._outcomes) >= self.settings.failure_rate):
            self._trip(now)

    def _trip(self, now: float) -> None:
        self._state, self._opened_at, self._probes_out = OPEN, now, 0

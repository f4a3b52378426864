"""Lifeguard's dynamic suspicion timeout (memberlist's `suspicion`).

A suspicion starts at `max` and shrinks towards `min` as independent peers confirm it: after `n` of
the `k` wanted confirmations the timeout is

    max - (max - min) * log(n + 1) / log(k + 1)      (never below min)

measured from when the suspicion began. One slow accuser therefore cannot kill a healthy member
quickly, while a really dead member, which everyone soon accuses, is declared dead at `min`.
The node that raised the suspicion never counts as a confirmation (its own message may be gossiped
back to it), and each peer counts once.
"""

from __future__ import annotations

import math


def remaining_time(n: int, k: int, elapsed: float, min_timeout: float, max_timeout: float) -> float:
    """Seconds left before the timeout fires (may be negative: fire now)."""
    if k < 1:
        timeout = min_timeout
    else:
        fraction = math.log(n + 1.0) / math.log(k + 1.0)
        timeout = max(min_timeout, max_timeout - fraction * (max_timeout - min_timeout))
    return timeout - elapsed


class Suspicion:
    """One member's suspicion: who confirmed it and when it runs out. Pure bookkeeping, no timer."""

    __slots__ = ("start", "k", "min_timeout", "max_timeout", "n", "_confirmed")

    def __init__(self, accuser: str, k: int, min_timeout: float, max_timeout: float, start: float) -> None:
        self.start = start
        self.k = k
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.n = 0
        self._confirmed = {accuser}

    @property
    def deadline(self) -> float:
        """The absolute time at which the suspect is declared dead."""
        return self.start + remaining_time(self.n, self.k, 0.0, self.min_timeout, self.max_timeout)

    def would_confirm(self, accuser: str) -> bool:
        return self.n < self.k and accuser not in self._confirmed

    def confirm(self, accuser: str) -> bool:
        """Count an independent accusation; True if it was new (and worth re-gossiping)."""
        if self.n >= self.k or accuser in self._confirmed:
            return False
        self._confirmed.add(accuser)
        self.n += 1
        return True

    @property
    def accusers(self) -> frozenset[str]:
        return frozenset(self._confirmed)

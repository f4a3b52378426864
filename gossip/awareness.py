"""Lifeguard's local health multiplier (memberlist's `awareness`).

A node that misses acks or nacks it should have received, or that has to refute accusations about
itself, is more likely slow itself (CPU starved, stalled event loop, saturated NIC) than surrounded
by dead peers. Its score rises, and its own probe interval stretches by `score + 1`, so it accuses
others less eagerly while it is the problem. Successful probes bring the score back down.
"""

from __future__ import annotations


class Awareness:
    __slots__ = ("max_multiplier", "score")

    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError("max_multiplier must be at least 1")
        self.max_multiplier = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> int:
        """Move the score by `delta`, clamped to [0, max_multiplier - 1]; returns the new score."""
        self.score = min(max(self.score + delta, 0), self.max_multiplier - 1)
        return self.score

    def scale(self, timeout: float) -> float:
        """`timeout` stretched by the current health: x1 when healthy, up to x max_multiplier."""
        return timeout * (self.score + 1)

    @property
    def healthy(self) -> bool:
        return self.score == 0

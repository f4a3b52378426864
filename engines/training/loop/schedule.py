"""Step counts and the learning-rate schedule (linear warm-up, then linear, cosine or constant)."""

from __future__ import annotations

import math
from dataclasses import dataclass


def steps_per_epoch(n_micro_batches: int, accumulation: int) -> int:
    return math.ceil(n_micro_batches / accumulation)


def total_steps(n_micro_batches: int, accumulation: int, epochs: int, max_steps: int | None) -> int:
    total = steps_per_epoch(n_micro_batches, accumulation) * epochs
    return min(total, max_steps) if max_steps else total


@dataclass(frozen=True)
class LrSchedule:
    """Multiplier of the peak learning rate for an optimizer step (0-based): LambdaLR's lambda."""

    kind: str
    warmup: int
    total: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

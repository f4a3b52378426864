"""Stopping rules, sans-IO: the loss watchdog and early stopping on the validation loss.

Both are fed numbers and say what to do, so they are tested without a model; their state goes into
checkpoints so a resumed job judges the same way an unbroken one would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class LossWatchdog:
    """NaN or infinite loss or gradient norm stops at once; so does divergence: the smoothed loss
    (EMA) rising above `factor` times the mean loss of the first `window` steps.
    """

    factor: float | None = 3.0
    window: int = 5
    smoothing: float = 0.9
    seen: int = 0
    baseline_sum: float = 0.0
    ema: float | None = None

    def check(self, loss: float, grad_norm: float) -> str | None:
        """The reason to stop, or None. Call before the optimizer applies the step."""
        if not math.isfinite(loss):
            return f"the loss became {loss} (not a finite number)"
        if not math.isfinite(grad_norm):
            return f"the gradient norm became {grad_norm} (not a finite number)"
        return None

    def observe(self, loss: float) -> str | None:
        """Record a finished step's loss; returns the reason to stop when the loss diverges."""
        self.seen += 1
        self.ema = loss if self.ema is None else self.smoothing * self.ema + (1 - self.smoothing) * loss
        if self.seen <= self.window:
            self.baseline_sum += loss
            return None
        baseline = self.baseline_sum / self.window
        if self.factor is not None and baseline > 0 and self.ema > self.factor * baseline:
            return (f"the loss diverged: smoothed loss {self.ema:.4g} is over {self.factor:g}x the first "
                    f"{self.window} steps' mean {baseline:.4g}; try a lower learning rate")
        return None

    def state(self) -> dict:
        return asdict(self)


@dataclass
class EarlyStopping:
    """Stop after `patience` evaluations in a row that do not beat the best loss by `min_delta`."""

    patience: int | None = None
    min_delta: float = 0.0
    best: float | None = None
    bad_evals: int = 0

    def update(self, eval_loss: float) -> tuple[bool, bool]:
        """(improved, stop) after an evaluation."""
        improved = self.best is None or eval_loss < self.best - self.min_delta
        if improved:
            self.best = eval_loss
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        stop = self.patience is not None and self.bad_evals >= self.patience
        return improved, stop

    def state(self) -> dict:
        return asdict(self)

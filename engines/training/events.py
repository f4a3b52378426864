"""What a training job reports, as plain frozen dataclasses that round-trip through JSON.

Every event carries `job_id`, `time` (Unix seconds) and a `type` string; `to_dict` / `event_from_dict`
convert at the process and network boundaries. Exactly one terminal event (`finished`, `failed`,
`cancelled` or `paused`) ends every run; the runner makes one up (`failed`, code `child_died`) when the
child process dies without sending it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, kw_only=True)
class Event:
    type: ClassVar[str] = ""
    terminal: ClassVar[bool] = False
    job_id: str
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **dataclasses.asdict(self)}


@dataclass(frozen=True, kw_only=True)
class Started(Event):
    """The child is up (before any heavy import finished)."""

    type: ClassVar[str] = "started"
    pid: int


@dataclass(frozen=True, kw_only=True)
class DatasetPrepared(Event):
    type: ClassVar[str] = "dataset_prepared"
    format: str
    train_samples: int
    eval_samples: int
    train_tokens: int
    """Tokens in the training set (all of them, prompt included)."""
    loss_tokens: int
    """Tokens of the training set the loss is computed on."""
    sequences: int
    """Training sequences after packing (= train_samples without packing)."""
    truncated_samples: int
    dropped_samples: int
    """Samples left with no trainable token after truncation (they are skipped)."""


@dataclass(frozen=True, kw_only=True)
class ModelLoaded(Event):
    type: ClassVar[str] = "model_loaded"
    model_type: str
    device: str
    dtype: str
    target_modules: list[str]
    trainable_params: int
    total_params: int
    seconds: float


@dataclass(frozen=True, kw_only=True)
class Resumed(Event):
    type: ClassVar[str] = "resumed"
    step: int
    epoch: int
    tokens: int
    checkpoint: str


@dataclass(frozen=True, kw_only=True)
class Step(Event):
    type: ClassVar[str] = "step"
    step: int
    total_steps: int
    epoch: float
    """Epochs done, fractional (1.5 = half-way through the second epoch)."""
    loss: float
    learning_rate: float
    grad_norm: float
    tokens: int
    """Input tokens (padding excluded) trained on since the job began, resumed runs included."""
    step_tokens: int
    step_seconds: float
    tokens_per_second: float
    """Throughput over this run's steps so far (the first step, which warms up, excluded when there are more)."""
    eta_seconds: float
    memory_bytes: int
    """Peak accelerator memory allocated, or the process's resident memory on the CPU."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Method-specific figures (DPO: rewards_margin, rewards_accuracy, ...)."""


@dataclass(frozen=True, kw_only=True)
class Evaluation(Event):
    type: ClassVar[str] = "evaluation"
    step: int
    eval_loss: float
    best_eval_loss: float
    improved: bool
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class CheckpointSaved(Event):
    type: ClassVar[str] = "checkpoint_saved"
    step: int
    path: str
    reason: str
    """interval, requested or pause."""


@dataclass(frozen=True, kw_only=True)
class Notice(Event):
    """Something the user should know that does not stop the job (samples dropped, ...)."""

    type: ClassVar[str] = "notice"
    message: str


@dataclass(frozen=True, kw_only=True)
class Finished(Event):
    type: ClassVar[str] = "finished"
    terminal: ClassVar[bool] = True
    adapter_dir: str
    merged_dir: str | None
    manifest: dict[str, Any]
    step: int
    tokens: int
    train_loss: float | None
    eval_loss: float | None
    stop_reason: str
    """completed (epochs or max_steps done) or early_stopping."""


@dataclass(frozen=True, kw_only=True)
class Failed(Event):
    type: ClassVar[str] = "failed"
    terminal: ClassVar[bool] = True
    code: str
    """invalid_job, invalid_training_file, unknown_architecture, bad_targets, diverged, child_died, ..."""
    message: str
    step: int = 0
    error: dict[str, Any] | None = None
    """Structured detail: a DatasetError's file/row/field/expected, or the child's exit code."""


@dataclass(frozen=True, kw_only=True)
class Cancelled(Event):
    type: ClassVar[str] = "cancelled"
    terminal: ClassVar[bool] = True
    step: int


@dataclass(frozen=True, kw_only=True)
class Paused(Event):
    """Checkpointed and stopped; running the same spec again resumes from `checkpoint`."""

    type: ClassVar[str] = "paused"
    terminal: ClassVar[bool] = True
    step: int
    checkpoint: str


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (Started, DatasetPrepared, ModelLoaded, Resumed, Step, Evaluation, CheckpointSaved, Notice,
                Finished, Failed, Cancelled, Paused)
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from `Event.to_dict()` output; raises ValueError on an unknown type."""
    data = dict(data)
    kind = data.pop("type", None)
    cls = EVENT_TYPES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown training event type {kind!r} (expected one of {', '.join(EVENT_TYPES)})")
    return cls(**data)

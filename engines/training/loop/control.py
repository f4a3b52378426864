"""How the outside world steers a running trainer, and how the trainer reports back.

`TrainerControl` is set from another thread (the child's command reader) and read by the loop at
safe points: between micro-batches for cancel, at step boundaries for checkpoint-now and pause.
"""

from __future__ import annotations

import threading
from typing import Protocol

from ..events import Event


class EventSink(Protocol):
    """Receives every event the trainer emits. Must not block for long: the training loop waits on it."""

    def __call__(self, event: Event) -> None: ...


class TrainerControl:
    def __init__(self) -> None:
        self._cancel = threading.Event()
        self._pause = threading.Event()
        self._checkpoint = threading.Event()

    def request_cancel(self) -> None:
        """Stop at the next safe point; the job ends `cancelled` and publishes nothing."""
        self._cancel.set()

    def request_pause(self) -> None:
        """Checkpoint at the next step boundary and stop; the job ends `paused`."""
        self._pause.set()

    def request_checkpoint(self) -> None:
        """Write a checkpoint at the next step boundary and carry on."""
        self._checkpoint.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def pause_requested(self) -> bool:
        return self._pause.is_set()

    def take_checkpoint_request(self) -> bool:
        """True once per request."""
        if self._checkpoint.is_set():
            self._checkpoint.clear()
            return True
        return False

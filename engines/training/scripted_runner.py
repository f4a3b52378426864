"""A test double of `TrainingRunner`: the same interface and event protocol, no child, no model.

For tests of what drives a runner (the worker's training service, the coordinator's job records):
it emits started, dataset_prepared, model_loaded, `steps` step events (a checkpoint every
`checkpoint_every`), then finished, and obeys cancel, pause, checkpoint_now and kill as the real one
does. `step_event` is set before each step is emitted, so a test can hold the job at a step. It
writes no files; `finished.adapter_dir` names the folder the real runner would write.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from . import events as ev
from .spec import JobSpec


class ScriptedTrainingRunner:
    def __init__(self, spec: JobSpec | dict[str, Any], *, steps: int = 5, step_tokens: int = 100,
                 resume_from: int = 0) -> None:
        self.spec = spec if isinstance(spec, JobSpec) else JobSpec.from_dict(spec)
        self.steps, self.step_tokens, self.resume_from = steps, step_tokens, resume_from
        self.step_gate = asyncio.Event()
        self.step_gate.set()  # clear it to hold the job before its next step
        self._commands: list[str] = []
        self._killed = False
        self._started = False
        self.terminal: ev.Event | None = None
        self.exitcode: int | None = None
        self.pid: int | None = None

    async def start(self) -> None:
        self._started = True
        self.pid = os.getpid()

    async def events(self) -> AsyncIterator[ev.Event]:
        job = self.spec.job_id
        yield ev.Started(job_id=job, pid=self.pid or 0)
        yield ev.DatasetPrepared(job_id=job, format=self.spec.format or "messages", train_samples=self.steps,
                                 eval_samples=0, train_tokens=self.steps * self.step_tokens,
                                 loss_tokens=self.steps * self.step_tokens // 2, sequences=self.steps,
                                 truncated_samples=0, dropped_samples=0)
        yield ev.ModelLoaded(job_id=job, model_type="llama", device="cpu", dtype="float32",
                             target_modules=["q_proj", "v_proj"], trainable_params=1, total_params=2, seconds=0.0)
        if self.resume_from:
            yield ev.Resumed(job_id=job, step=self.resume_from, epoch=0, tokens=self.resume_from * self.step_tokens,
                             checkpoint=str(self._checkpoint(self.resume_from)))
        step = self.resume_from
        while step < self.steps:
            await self.step_gate.wait()
            if self._killed:
                yield self._end(ev.Failed(job_id=job, code="child_died", step=step, error={"exitcode": -9},
                                          message="the training process was killed by signal SIGKILL"), -9)
                return
            if "cancel" in self._commands:
                yield self._end(ev.Cancelled(job_id=job, step=step))
                return
            step += 1
            yield ev.Step(job_id=job, step=step, total_steps=self.steps, epoch=step / self.steps, loss=1.0 / step,
                          learning_rate=self.spec.hyperparameters.learning_rate, grad_norm=1.0,
                          tokens=step * self.step_tokens, step_tokens=self.step_tokens, step_seconds=0.01,
                          tokens_per_second=self.step_tokens / 0.01, eta_seconds=(self.steps - step) * 0.01,
                          memory_bytes=0)
            await asyncio.sleep(0)  # let the consumer send commands between steps, as a real step would
            if "pause" in self._commands:
                path = str(self._checkpoint(step))
                yield ev.CheckpointSaved(job_id=job, step=step, path=path, reason="pause")
                yield self._end(ev.Paused(job_id=job, step=step, checkpoint=path))
                return
            if "checkpoint" in self._commands or (self.spec.checkpoint_every and step % self.spec.checkpoint_every == 0
                                                  and step < self.steps):
                reason = "requested" if "checkpoint" in self._commands else "interval"
                self._commands = [c for c in self._commands if c != "checkpoint"]
                yield ev.CheckpointSaved(job_id=job, step=step, path=str(self._checkpoint(step)), reason=reason)
        adapter = str(Path(self.spec.output_dir) / "adapter")
        yield self._end(ev.Finished(job_id=job, adapter_dir=adapter, merged_dir=None,
                                    manifest={"job_id": job, "files": {}}, step=step, tokens=step * self.step_tokens,
                                    train_loss=1.0 / max(1, step), eval_loss=None, stop_reason="completed"))

    async def wait(self) -> ev.Event:
        async for _ in self.events():
            pass
        assert self.terminal is not None
        return self.terminal

    async def cancel(self) -> None:
        self._commands.append("cancel")

    async def pause(self) -> None:
        self._commands.append("pause")

    async def checkpoint_now(self) -> None:
        self._commands.append("checkpoint")

    async def kill(self) -> None:
        self._killed = True
        self.step_gate.set()

    async def close(self, timeout: float = 30.0) -> None:
        pass

    async def __aenter__(self) -> ScriptedTrainingRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _end(self, event: ev.Event, exitcode: int = 0) -> ev.Event:
        self.terminal, self.exitcode = event, exitcode
        return event

    def _checkpoint(self, step: int) -> Path:
        return Path(self.spec.output_dir) / "checkpoints" / f"step-{step:08d}"

"""The child-process runner: events stream to asyncio without blocking it, commands reach the child,
kill -9 of the child is reported, and a rerun resumes from the last checkpoint with counters intact."""

from __future__ import annotations

import asyncio
import time

import pytest

from cynode.engines.training import ScriptedTrainingRunner, TrainingRunner
from cynode.errors import TrainingError
from training_testkit import job

pytestmark = pytest.mark.asyncio(loop_scope="session")


class LoopWatch:
    """Measures how long the event loop goes without running a task (what a blocking call would cause)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.02)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.02)
            last = now

    def __enter__(self) -> LoopWatch:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_checkpoint_now_pause_resume_and_cancel_through_the_child(tiny_model_dir, secret_file, tmp_path):
    spec = job(tiny_model_dir, secret_file, tmp_path / "o", hyperparameters={"n_epochs": 50})
    seen = []
    with LoopWatch() as watch:
        async with TrainingRunner(spec) as runner:
            async for event in runner.events():
                seen.append(event)
                if event.type == "step" and event.step == 2:
                    await runner.checkpoint_now()
                if event.type == "checkpoint_saved" and event.reason == "requested":
                    await runner.pause()
        assert runner.exitcode == 0
    types = [e.type for e in seen]
    assert types[:3] == ["started", "dataset_prepared", "model_loaded"] and types[3] == "step"
    assert seen[0].pid == runner.pid
    paused = seen[-1]
    assert paused.type == "paused" and paused.step >= 3
    assert ("checkpoint_saved", "pause") == (seen[-2].type, seen[-2].reason)
    assert watch.worst < 1.5, f"the event loop was blocked for {watch.worst:.2f} s"

    async with TrainingRunner(spec) as runner:
        async for event in runner.events():
            if event.type == "resumed":
                assert event.step == paused.step
                await runner.cancel()
        cancelled = runner.terminal
    assert cancelled.type == "cancelled" and cancelled.step >= paused.step
    assert not (tmp_path / "o" / "adapter").exists()


async def test_a_child_killed_with_sigkill_is_reported_and_a_rerun_resumes_with_counters_intact(
        tiny_model_dir, secret_file, tmp_path):
    spec = job(tiny_model_dir, secret_file, tmp_path / "o", checkpoint_every=2, hyperparameters={"n_epochs": 4})
    tokens_at = {}
    checkpoints = []
    async with TrainingRunner(spec) as runner:
        async for event in runner.events():
            if event.type == "step":
                tokens_at[event.step] = event.tokens
            if event.type == "checkpoint_saved":
                checkpoints.append(event.step)
                if event.step == 4:
                    await runner.kill()
        died = runner.terminal
    assert died.type == "failed" and died.code == "child_died"
    assert runner.exitcode == -9 and "SIGKILL" in died.message and died.error["exitcode"] == -9
    assert died.step >= 4

    events = []
    async with TrainingRunner(spec) as runner:
        async for event in runner.events():
            events.append(event)
        finished = runner.terminal
    prepared = next(e for e in events if e.type == "dataset_prepared")
    resumed = next(e for e in events if e.type == "resumed")
    assert resumed.step == checkpoints[-1] and resumed.tokens == tokens_at[resumed.step]
    steps = [e.step for e in events if e.type == "step"]
    assert steps == list(range(resumed.step + 1, 25))  # 12 rows / batch 2 x 4 epochs = 24 steps
    assert finished.type == "finished" and finished.step == 24
    assert finished.tokens == prepared.train_tokens * 4  # every sample once per epoch, resumed or not
    assert (tmp_path / "o" / "adapter" / "manifest.json").is_file()


async def test_a_bad_spec_is_refused_before_any_process_starts(tmp_path):
    with pytest.raises(TrainingError) as info:
        TrainingRunner({"job_id": "x", "model_dir": "/m", "train_files": [], "output_dir": str(tmp_path)})
    assert info.value.code == "invalid_job" and "train_files" in info.value.message


async def test_the_scripted_double_follows_the_runners_protocol(tmp_path):
    spec = {"job_id": "d", "model_dir": "/m", "train_files": ["/t"], "output_dir": str(tmp_path), "checkpoint_every": 2}
    async with ScriptedTrainingRunner(spec, steps=5) as runner:
        kinds = [e.type for e in [e async for e in runner.events()]]
    assert kinds == ["started", "dataset_prepared", "model_loaded", "step", "step", "checkpoint_saved", "step",
                     "step", "checkpoint_saved", "step", "finished"]
    for command, terminal in (("cancel", "cancelled"), ("pause", "paused"), ("kill", "failed")):
        async with ScriptedTrainingRunner(spec, steps=50) as runner:
            async for event in runner.events():
                if event.type == "step" and event.step == 3:
                    await getattr(runner, command)()
        assert runner.terminal.type == terminal and runner.terminal.step in (3, 4)
    assert runner.terminal.code == "child_died"

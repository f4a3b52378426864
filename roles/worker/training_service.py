"""The worker's side of fine-tuning: announce itself, take jobs the leader assigns, run them.

A worker tagged `training` heartbeats into Redis (`cynode.training_store`) what it can train (its
models, with their config.json for the leader's memory estimate) and its free memory. The leader
pushes an assignment; the worker downloads the job's files from Redis, builds the engine's JobSpec
and runs it in a child process (`engines.training.TrainingRunner`), turning every engine event into
an OpenAI-shaped job event and renewing the job's lease while it runs.

Checkpoints and adapters go under `[worker] training_dir`, `jobs/<job id>/`: a worker that picks up
a job another worker lost (its lease ran out) resumes from the last checkpoint there, so workers
that stand in for each other must share that folder. Each status change and field write checks
that the job is still this worker's attempt; a worker that lost its job (a partition, a pause long
enough for the lease to pass) stops its child and writes nothing more.

On success the adapter is published (`publish_adapter`, one version per job) into
`<training_dir>/adapters/<model id>/<version>/` and recorded in Redis, where serving workers find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cynode.errors import CynodeError
from cynode.redis_conn import RedisConnection
from cynode.tasks import BackgroundTasks
from cynode.training_store import TERMINAL, TrainingStore, spec_dict

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
RENEW_S = 2.0


class TrainingService:
    def __init__(self, *, worker_id: str, redis: RedisConnection, training_dir: Path,
                 models: Callable[[], dict[str, Path | None]], model_dir: Callable[[str], Path],
                 free_memory: Callable[[], int], threads: int | None = None) -> None:
        self._worker_id = worker_id
        self._redis = redis
        self._store = TrainingStore(redis)
        self._dir = training_dir
        self._models = models
        self._model_dir = model_dir
        self._free_memory = free_memory
        self._threads = threads
        self._tasks = BackgroundTasks("training")
        self.current: str = ""
        self._runner: Any = None
        self._closing = False

    async def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._tasks.spawn(self._heartbeat_forever(), "training heartbeat")
        self._tasks.spawn(self._take_jobs_forever(), "training jobs")

    async def close(self) -> None:
        self._closing = True
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.close(timeout=20)  # the child checkpoints (pause) and exits
        await self._tasks.close()

    # ---- announce ------------------------------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        while True:
            try:
                await self._store.heartbeat(self._worker_id, {
                    **await asyncio.to_thread(self._model_configs), "free_memory": self._free_memory(),
                    "job": self.current, "seen": time.time(),
                })
            except CynodeError as exc:
                log.warning("training heartbeat: %s", exc.message)
            except Exception:
                log.exception("training heartbeat failed")
            await asyncio.sleep(HEARTBEAT_S)

    def _model_configs(self) -> dict[str, Any]:
        """{"models": every name -> its folder's id, "configs": folder id -> config.json when on disk}."""
        models: dict[str, str] = {}
        configs: dict[str, Any] = {}
        for name, folder in self._models().items():
            key = str(folder)
            models[name] = key
            if key not in configs:
                configs[key] = None
                if folder is not None and (folder / "config.json").is_file():
                    with contextlib.suppress(OSError, ValueError):
                        configs[key] = json.loads((folder / "config.json").read_text())
        return {"models": models, "configs": configs}

    # ---- run -----------------------------------------------------------------------------------

    async def _take_jobs_forever(self) -> None:
        while True:
            try:
                assignment = await self._store.take_assignment(self._worker_id, timeout=2)
            except CynodeError as exc:
                log.warning("training assignments: %s", exc.message)
                await asyncio.sleep(1)
                continue
            if assignment is None:
                continue
            job_id, attempt = assignment
            self.current = job_id
            try:
                await self._run(job_id, attempt)
            except CynodeError as exc:
                log.error("fine-tuning job %s: %s", job_id, exc.message)
            except Exception:
                log.exception("fine-tuning job %s failed in the worker", job_id)
            finally:
                self.current = ""
                self._runner = None

    async def _run(self, job_id: str, attempt: int) -> None:
        from cynode.engines.training import TrainingRunner

        owner = f"{self._worker_id}:{attempt}"
        job = await self._store.job(job_id)
        if job is None or job["status"] != "running" or job.get("worker") != self._worker_id \
                or int(job.get("attempt") or 0) != attempt:
            return  # cancelled or reassigned before we got to it
        try:
            spec = await self._spec(job)
        except CynodeError as exc:
            await self._end(job_id, owner, "failed", error={"code": exc.code or "invalid_job", "message": exc.message,
                                                            "param": None})
            return
        verb = "Resuming" if attempt > 1 else "Started"
        await self._store.add_event(job_id, f"{verb} training on worker {self._worker_id} (attempt {attempt})")
        runner = self._runner = TrainingRunner(spec)
        await runner.start()
        watcher = asyncio.create_task(self._watch(job_id, owner, runner))
        lost = False
        try:
            async for event in runner.events():
                if not await self._on_event(job_id, owner, job, event):
                    lost = True
                    await runner.kill()
                    break
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await runner.close(timeout=30)
        if lost:
            log.warning("fine-tuning job %s: no longer this worker's (attempt %d); stopped", job_id, attempt)

    async def _spec(self, job: dict[str, Any]) -> dict[str, Any]:
        model_dir = await asyncio.to_thread(self._model_dir, job["model"])
        files_dir = self._dir / "files"
        paths: dict[str, list[str]] = {"training_file": [], "validation_file": []}
        for param in paths:
            file_id = job.get(param)
            if not file_id:
                continue
            record = await self._store.get_file(file_id)
            text = await self._store.file_text(file_id)
            if record is None or text is None:
                raise CynodeError(f"{param} {file_id} was deleted", code="invalid_file")
            path = files_dir / file_id / Path(record["filename"]).name
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.is_file():
                tmp = path.with_name(path.name + ".part")
                tmp.write_text(text)
                tmp.replace(path)
            paths[param].append(str(path))
        spec = spec_dict(job, model_dir=str(model_dir), train_files=paths["training_file"],
                         validation_files=paths["validation_file"], output_dir=str(self._dir / "jobs" / job["id"]))
        if self._threads and "threads" not in spec:
            spec["threads"] = self._threads
        return spec

    async def _watch(self, job_id: str, owner: str, runner: Any) -> None:
        """Renew the lease; pass on cancel and pause; stop the child if the job is no longer ours."""
        asked = ""
        while True:
            await asyncio.sleep(min(RENEW_S, 0.5))
            try:
                if not await self._store.renew(job_id, owner):
                    log.warning("fine-tuning job %s: lease lost; stopping the child", job_id)
                    await runner.kill()
                    return
                control = (await self._store.job(job_id) or {}).get("control", "")
            except CynodeError as exc:
                log.warning("fine-tuning job %s: %s", job_id, exc.message)
                continue
            if control and control != asked:
                asked = control
                await (runner.cancel() if control == "cancel" else runner.pause())

    async def _on_event(self, job_id: str, owner: str, job: dict[str, Any], event: Any) -> bool:
        """Record one engine event; False when the job is no longer this worker's."""
        kind = event.type
        store = self._store
        if kind == "step":
            data = {"step": event.step, "total_steps": event.total_steps, "train_loss": event.loss,
                    "learning_rate": event.learning_rate, "grad_norm": event.grad_norm, "tokens": event.tokens,
                    "tokens_per_second": event.tokens_per_second, "eta_seconds": event.eta_seconds,
                    "epoch": event.epoch, "memory_bytes": event.memory_bytes, **(event.metrics or {})}
            await store.add_event(job_id, f"Step {event.step}/{event.total_steps}: training loss={event.loss:.4f}",
                                  kind="metrics", data=data)
            finish = int(time.time() + event.eta_seconds) if event.eta_seconds is not None else ""
            return await store.update_owned(job_id, owner, trained_tokens=event.tokens, estimated_finish=finish)
        if kind == "checkpoint_saved":
            short = job_id.removeprefix("ftjob-")
            await store.add_checkpoint(job_id, {
                "object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{short}-{event.step}",
                "created_at": int(time.time()), "fine_tuning_job_id": job_id, "step_number": event.step,
                "fine_tuned_model_checkpoint": f"{job.get('fine_tuned_model_id')}:ckpt-step-{event.step}",
                "metrics": {"step": event.step}, "reason": event.reason,
            })
            await store.add_event(job_id, f"Checkpoint saved at step {event.step} ({event.reason})",
                                  data={"step": event.step, "reason": event.reason})
            return await store.renew(job_id, owner)
        if kind == "finished":
            return await self._finished(job_id, owner, job, event)
        if kind == "failed":
            param = "training_file" if event.code == "invalid_training_file" else None
            error = {"code": event.code, "message": event.message, "param": param, **(event.error or {})}
            error.pop("traceback", None)
            await store.add_event(job_id, event.message, level="error", data={"code": event.code})
            return await self._end(job_id, owner, "failed", error=error)
        if kind == "cancelled":
            await store.add_event(job_id, f"Job cancelled at step {event.step}")
            return await self._end(job_id, owner, "cancelled")
        if kind == "paused" and self._closing:
            # This worker is stopping, not the user pausing: hand the job back to be resumed elsewhere.
            await store.add_event(job_id, f"Worker {self._worker_id} is shutting down; checkpointed at step "
                                  f"{event.step}, the job moves to another worker", data={"step": event.step})
            await store.release(job_id, owner)
            return True
        if kind == "paused":
            await store.add_event(job_id, f"Job paused at step {event.step}; resume continues from there",
                                  data={"step": event.step})
            return await store.update_owned(job_id, owner, end="paused")
        message = _MESSAGES.get(kind)
        if message is not None:
            fields = event.to_dict()
            await store.add_event(job_id, message(fields), data={k: v for k, v in fields.items()
                                                                  if k not in ("job_id", "type")})
        return True

    async def _finished(self, job_id: str, owner: str, job: dict[str, Any], event: Any) -> bool:
        from cynode.engines.training import publish_adapter

        model_id = job.get("fine_tuned_model_id") or f"{job['model']}:ft-{job_id}"
        published = await asyncio.to_thread(publish_adapter, event.adapter_dir, self._dir / "adapters", model_id)
        await self._store.publish_adapter(model_id, {
            "base": job["model"], "path": str(published.path), "version": published.version, "job_id": job_id,
            "created_at": int(time.time()), "sha256": _digest(published.manifest),
        })
        await self._store.add_event(job_id, f"New fine-tuned model created: {model_id}",
                                    data={"fine_tuned_model": model_id, "version": published.version,
                                          "train_loss": event.train_loss, "steps": event.step})
        ok = await self._end(job_id, owner, "succeeded", fine_tuned_model=model_id, trained_tokens=event.tokens)
        if ok:
            await self._store.add_event(job_id, "The job has successfully completed")
        return ok

    async def _end(self, job_id: str, owner: str, status: str, **fields: Any) -> bool:
        assert status in TERMINAL
        return await self._store.update_owned(job_id, owner, end=status, finished_at=int(time.time()), **fields)


def _digest(manifest: dict[str, Any]) -> str:
    files = manifest.get("files") or {}
    return ",".join(f"{name}:{(info or {}).get('sha256', '')[:16]}" for name, info in sorted(files.items())) \
        if isinstance(files, dict) else ""


_MESSAGES: dict[str, Callable[[dict[str, Any]], str]] = {
    "started": lambda e: f"Training process {e.get('pid')} started",
    "dataset_prepared": lambda e: (f"Dataset prepared: {e['train_samples']} training and {e['eval_samples']} "
                                   f"validation samples, {e['train_tokens']} tokens (format {e['format']})"),
    "model_loaded": lambda e: (f"Model loaded on {e['device']} ({e['dtype']}): LoRA on "
                               f"{', '.join(e['target_modules'])}, {e['trainable_params']} trainable parameters"),
    "resumed": lambda e: f"Resumed from the checkpoint at step {e['step']} ({e['tokens']} tokens trained)",
    "evaluation": lambda e: f"Step {e['step']}: validation loss={e['eval_loss']:.4f}",
    "notice": lambda e: e["message"],
}

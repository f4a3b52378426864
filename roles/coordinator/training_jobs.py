"""Fine-tuning jobs, as the coordinator leader drives them (ARCHITECTURE section 3, training).

Every half second the leader, and only the leader (each write carries its fencing epoch, checked in
Redis next to the data):
- checks the files of jobs in `validating_files` (structure only: every row of the file in its
  format, no tokenizer), moving each to `queued` or to `failed` with an error naming the file, the
  row, the field and the expected format;
- sends a running job whose worker stopped renewing its lease back to the queue, so another worker
  picks it up and resumes from the last checkpoint;
- hands queued jobs, best priority first, to idle workers tagged `training` that have the model
  and the memory the job needs (estimated from the model's config.json, `estimate_from_config`).

Job records, events and checkpoints live in Redis (`cynode.training_store`), so a new leader simply
carries on where the old one stopped.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cynode.errors import CynodeError, DatasetError, TrainingError
from cynode.training_store import TrainingStore, spec_dict

log = logging.getLogger(__name__)

INTERVAL_S = 0.5


class TrainingJobs:
    def __init__(self, store: TrainingStore, *, is_leader: Callable[[], bool], epoch: Callable[[], int],
                 interval: float = INTERVAL_S) -> None:
        self._store = store
        self._is_leader = is_leader
        self._epoch = epoch
        self._interval = interval
        self._waiting_noted: set[str] = set()

    async def run(self) -> None:
        while True:
            if self._is_leader():
                try:
                    await self.tick()
                except CynodeError as exc:
                    log.warning("fine-tuning jobs: %s", exc.message)
                except Exception:
                    log.exception("fine-tuning jobs: unexpected error")
            await asyncio.sleep(self._interval)

    async def tick(self) -> None:
        epoch = self._epoch()
        for job_id in await self._store.validating():
            await self._validate(job_id, epoch)
        for job_id in await self._store.running():
            job = await self._store.job(job_id) or {}
            if await self._store.requeue_if_orphaned(job_id, epoch) == 1:
                log.warning("fine-tuning job %s: worker %s stopped renewing its lease; requeued", job_id,
                            job.get("worker"))
                await self._store.add_event(job_id, f"Worker {job.get('worker')} was lost; the job is queued again "
                                            "and resumes from its last checkpoint", level="warn")
        await self._assign(epoch)

    # ---- validating_files ----------------------------------------------------------------------

    async def _validate(self, job_id: str, epoch: int) -> None:
        job = await self._store.job(job_id)
        if job is None or job["status"] != "validating_files":
            await self._store.mark_validated(job_id, epoch)  # drops it from the set
            return
        error, summary = await self._check(job)
        outcome = await self._store.mark_validated(job_id, epoch, error=error)
        if outcome != 1:
            return
        if error:
            await self._store.add_event(job_id, error["message"], level="error")
            await self._store.add_event(job_id, "The job failed", level="error")
        else:
            await self._store.add_event(job_id, f"Files validated: {summary}")
            await self._store.add_event(job_id, f"Job enqueued (priority {job.get('priority') or 0})")

    async def _check(self, job: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        from cynode.engines.training import check_files

        settings = job.get("cynode") or {}
        method = (job.get("method") or {}).get("type", "supervised")
        with tempfile.TemporaryDirectory(prefix="cynode-validate-") as tmp:
            paths, names = [], {}
            for param in ("training_file", "validation_file"):
                file_id = job.get(param)
                if not file_id:
                    continue
                record = await self._store.get_file(file_id)
                text = await self._store.file_text(file_id)
                if record is None or text is None:
                    return {"code": "invalid_file", "param": param,
                            "message": f"{param} {file_id}: the file was deleted"}, ""
                path = Path(tmp) / file_id / Path(record["filename"]).name
                path.parent.mkdir()
                path.write_text(text)
                paths.append(str(path))
                names[str(path)] = (f"{record['filename']} ({file_id})", param)
            try:
                checked = await asyncio.to_thread(check_files, paths[:1], settings.get("format"), method)
                if len(paths) > 1:
                    await asyncio.to_thread(check_files, paths[1:], settings.get("format") or checked.format, method)
            except DatasetError as exc:
                shown, param = names.get(exc.file, (exc.file, "training_file"))
                body = exc.to_dict()
                body.update(message=exc.message.replace(exc.file, shown), file=shown, param=param)
                return body, ""
            except TrainingError as exc:
                return {"code": exc.code, "message": exc.message, "param": "training_file"}, ""
        return None, f"format {checked.format}, {checked.rows} training rows"

    # ---- queued -> running -----------------------------------------------------------------------

    async def _assign(self, epoch: int) -> None:
        queued = await self._store.queued()
        if not queued:
            return
        workers = await self._store.workers()
        busy = set()
        for job_id in await self._store.running():
            job = await self._store.job(job_id)
            if job and job.get("worker"):
                busy.add(job["worker"])
        idle = {w: info for w, info in workers.items() if w not in busy and not info.get("job")}
        for job_id in queued:
            if not idle:
                return
            job = await self._store.job(job_id)
            if job is None:
                continue
            choice = self._pick(job, idle)
            if isinstance(choice, str):
                if job_id not in self._waiting_noted:
                    self._waiting_noted.add(job_id)
                    await self._store.add_event(job_id, choice)
                continue
            worker, need = choice
            attempt = await self._store.assign(job_id, worker, epoch)
            if attempt <= 0:
                return  # -1: no longer the leader's epoch; 0: cancelled or paused meanwhile
            self._waiting_noted.discard(job_id)
            idle.pop(worker)
            log.info("fine-tuning job %s assigned to %s (attempt %d)", job_id, worker, attempt)
            await self._store.add_event(job_id, f"Assigned to training worker {worker} (attempt {attempt}; "
                                        f"needs about {need / 2**20:.0f} MiB)")

    def _pick(self, job: dict[str, Any], idle: dict[str, dict[str, Any]]) -> tuple[str, int] | str:
        """The idle worker with the most free memory among those that have the model and room for it,
        or why there is none yet."""
        best, most_free, need = None, 0, 0
        for worker, info in idle.items():
            spec_id = (info.get("models") or {}).get(job["model"])
            if spec_id is None:
                continue
            need = self._need(job, (info.get("configs") or {}).get(spec_id))
            free = int(info.get("free_memory") or 0)
            most_free = max(most_free, free)
            if free and need > free:
                continue
            if best is None or free > best[2]:
                best = (worker, need, free)
        if best is not None:
            return best[0], best[1]
        if most_free:
            return (f"Waiting for a training worker with {need / 2**20:.0f} MiB free for this job (the most an idle "
                    f"one has is {most_free / 2**20:.0f} MiB; a smaller batch_size or max_seq_len needs less)")
        return f"Waiting for an idle training worker with the model {job['model']}"

    @staticmethod
    def _need(job: dict[str, Any], config: dict[str, Any] | None) -> int:
        if not config:
            return 0
        from cynode.engines.training.model.memory import estimate_from_config
        from cynode.engines.training.spec import JobSpec

        try:
            spec = JobSpec.from_dict(spec_dict(job, model_dir="-", train_files=["-"], validation_files=[],
                                               output_dir="-"))
            return estimate_from_config(config, spec).total
        except (TrainingError, KeyError, ValueError):
            return 0

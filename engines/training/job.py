"""One training job from spec to adapter, in whatever process calls it (the runner's child does).

Stages and their events: dataset_prepared, model_loaded, (resumed), step..., evaluation...,
checkpoint_saved..., then exactly one terminal event, which `run_job` also returns. Every failure
becomes a `failed` event with a stable code: nothing escapes as an exception.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from cynode.errors import DatasetError, TrainingError

from . import events as ev
from .loop.control import EventSink, TrainerControl
from .output.adapter import adapter_dir
from .output.manifest import MANIFEST, base_model_version, verify_manifest
from .spec import JobSpec

log = logging.getLogger(__name__)


def run_job(spec: JobSpec, emit: EventSink, control: TrainerControl | None = None) -> ev.Event:
    control = control or TrainerControl()
    state = {"step": 0}
    threads = _set_threads(spec.threads)
    try:
        terminal = _run(spec, emit, control, state)
    except DatasetError as exc:
        terminal = ev.Failed(job_id=spec.job_id, code="invalid_training_file", message=exc.message,
                             step=state["step"], error=exc.to_dict())
    except TrainingError as exc:
        terminal = ev.Failed(job_id=spec.job_id, code=exc.code, message=exc.message, step=state["step"])
    except Exception as exc:  # a bug or a foreign error (torch OOM, disk full): reported, never swallowed
        log.exception("training job %s failed", spec.job_id)
        terminal = ev.Failed(job_id=spec.job_id, code=_foreign_code(exc), message=f"{type(exc).__name__}: {exc}",
                             step=state["step"], error={"traceback": traceback.format_exc(limit=20)})
    finally:
        _set_threads(threads)
    emit(terminal)
    return terminal


def _set_threads(threads: int | None) -> int | None:
    """Set torch's CPU threads for the job; returns the previous count, to restore when run in-process."""
    if not threads:
        return None
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous


def _run(spec: JobSpec, emit: EventSink, control: TrainerControl, state: dict[str, int]) -> ev.Event:
    from .data.prepare import prepare_dataset
    from .loop.trainer import Trainer
    from .model.setup import load_tokenizer, setup_model

    done = _finished_adapter(spec)
    if done is not None:
        return _finish_from(spec, *done)
    tokenizer = load_tokenizer(spec.model_dir)
    data = prepare_dataset(spec, tokenizer)
    emit(ev.DatasetPrepared(job_id=spec.job_id, format=data.format, **data.stats))
    if data.stats["dropped_samples"]:
        emit(ev.Notice(job_id=spec.job_id, message=f"{data.stats['dropped_samples']} samples had no trainable "
                       f"token within max_seq_len {spec.hyperparameters.max_seq_len} and are skipped"))
    if control.cancel_requested:
        return ev.Cancelled(job_id=spec.job_id, step=0)
    loaded = setup_model(spec, tokenizer)
    emit(ev.ModelLoaded(job_id=spec.job_id, model_type=loaded.model_type, device=loaded.device, dtype=loaded.dtype,
                        target_modules=loaded.target_modules, trainable_params=loaded.trainable_params,
                        total_params=loaded.total_params, seconds=round(loaded.seconds, 3)))
    trainer = Trainer(spec, loaded, data, emit=emit, control=control)
    trainer.resume_if_possible()
    state["step"] = trainer.state.step
    outcome = trainer.run()
    state["step"] = outcome.state.step
    if outcome.status == "cancelled":
        return ev.Cancelled(job_id=spec.job_id, step=outcome.state.step)
    if outcome.status == "paused":
        return ev.Paused(job_id=spec.job_id, step=outcome.state.step, checkpoint=str(outcome.checkpoint))
    return _publish_result(spec, loaded, data, trainer, outcome)


def _publish_result(spec: JobSpec, loaded: Any, data: Any, trainer: Any, outcome: Any) -> ev.Event:
    from .output.adapter import write_adapter
    from .output.merge import merge_adapter

    st = outcome.state
    base_id = spec.base_model_id or Path(spec.model_dir).name
    fields = {
        "job_id": spec.job_id,
        "method": spec.method,
        "base_model": {"id": base_id, "version": spec.base_model_version or base_model_version(spec.model_dir)},
        "lora": {"r": spec.lora.r, "alpha": spec.lora.alpha, "dropout": spec.lora.dropout,
                 "target_modules": loaded.target_modules, "use_dora": spec.lora.use_dora,
                 "use_rslora": spec.lora.use_rslora},
        "training": {
            "format": data.format, "train_samples": data.stats["train_samples"], "steps": st.step,
            "epochs_done": st.epoch, "tokens": st.tokens, "loss_tokens": st.loss_tokens,
            "train_loss": st.last_loss, "eval_loss": st.last_eval_loss, "train_seconds": round(st.train_seconds, 3),
            "tokens_per_second": round(st.tokens / st.train_seconds, 3) if st.train_seconds else None,
            "stop_reason": outcome.status, "seed": spec.seed,
            "hyperparameters": spec.hyperparameters.model_dump(mode="json"),
        },
    }
    folder, manifest = write_adapter(loaded.model, spec.output_dir, base_model_id=base_id, manifest_fields=fields,
                                     max_lora_rank=spec.serving.max_lora_rank, for_vllm=spec.serving.for_vllm)
    merged = None
    if spec.merge:
        del loaded.model, trainer.model  # the merge loads a fresh copy of the base in its saved dtype
        merged = str(merge_adapter(spec.model_dir, folder, Path(spec.output_dir) / "merged",
                                   manifest_fields={"job_id": spec.job_id, "base_model": fields["base_model"]}))
    return _finished(spec, folder, manifest, merged)


def _finished(spec: JobSpec, folder: Path, manifest: dict[str, Any], merged: str | None) -> ev.Finished:
    training = manifest.get("training", {})
    return ev.Finished(
        job_id=spec.job_id, adapter_dir=str(folder), merged_dir=merged, manifest=manifest,
        step=training.get("steps", 0), tokens=training.get("tokens", 0), train_loss=training.get("train_loss"),
        eval_loss=training.get("eval_loss"), stop_reason=training.get("stop_reason", "completed"),
    )


def _finished_adapter(spec: JobSpec) -> tuple[Path, dict[str, Any]] | None:
    """The adapter this job already wrote, if any: a child that died after writing it, before
    reporting, is reported finished again rather than trained twice."""
    folder = adapter_dir(spec.output_dir)
    if not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = verify_manifest(folder)
    except TrainingError:
        return None
    return (folder, manifest) if manifest.get("job_id") == spec.job_id else None


def _finish_from(spec: JobSpec, folder: Path, manifest: dict[str, Any]) -> ev.Finished:
    merged = None
    if spec.merge:
        from .output.merge import merge_adapter

        merged = Path(spec.output_dir) / "merged"
        if not (merged / MANIFEST).is_file():
            merge_adapter(spec.model_dir, folder, merged,
                          manifest_fields={"job_id": spec.job_id, "base_model": manifest.get("base_model")})
    return _finished(spec, folder, manifest, str(merged) if merged else None)


def _foreign_code(exc: Exception) -> str:
    name = type(exc).__name__
    if "OutOfMemory" in name or "out of memory" in str(exc).lower():
        return "out_of_memory"
    if isinstance(exc, OSError):
        return "io_error"
    return "internal_error"

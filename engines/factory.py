"""Backend names to engines: an explicit table, not plugin discovery.

The daemon ships as a PyInstaller binary, where entry-point discovery finds nothing; a table also
makes every backend name, and what it needs, visible in one place. Engine modules import torch and
friends, so they are imported only when a backend is actually created.

`sim` (a paced token emitter with no model, `sim_engine.py`) is for measuring cynode's own overhead:
`auto` never picks it, only asking for it by name builds it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cynode.engines.base import InferenceEngine
from cynode.engines.platform import Probe, select_backend
from cynode.errors import EngineError

if TYPE_CHECKING:  # the registry imports this module's neighbours; only the type is needed here
    from cynode.engines.registry import ModelSpec


def _model_dir(spec: ModelSpec, models_dir: Path) -> Path:
    """The safetensors folder of `spec`, converting a GGUF (or the built-in) once if needed."""
    from cynode.engines.builtin_model import ensure_builtin_model, ensure_converted

    if spec.source_kind == "builtin":
        return ensure_builtin_model(models_dir)
    if spec.source_kind == "gguf":
        return ensure_converted(spec.path, models_dir / spec.id)
    return spec.path


def _transformers(device: str) -> Callable[..., InferenceEngine]:
    def create(backend: str, *, spec: ModelSpec, models_dir: Path, max_concurrency: int | None, probe: Probe,
               sim: Mapping[str, Any], memory_budget: int | None = None,
               lora: Mapping[str, Any] | None = None) -> InferenceEngine:
        if device == "cuda" and not probe.cuda():
            raise EngineError(f"backend {backend!r} needs an NVIDIA GPU with CUDA; "
                              "torch.cuda.is_available() is False here")
        if device == "npu" and not probe.npu():
            raise EngineError(f"backend {backend!r} needs an Ascend NPU with torch_npu and CANN; "
                              "torch.npu.is_available() is False here (or torch_npu is not installed)")
        try:
            from cynode.engines.transformers_engine import TransformersEngine
        except ImportError as exc:
            raise EngineError(f"backend {backend!r} needs torch and transformers ({exc}); "
                              "install them with `pip install 'cynode[cpu]'`") from exc
        dtype = "float32" if spec.dtype == "auto" else spec.dtype
        return TransformersEngine(_model_dir(spec, models_dir), spec.id, aliases=spec.aliases, backend=backend,
                                  device=device, dtype=dtype, max_concurrency=max_concurrency,
                                  memory_budget=memory_budget)

    return create


def _embedding(device: str) -> Callable[..., InferenceEngine]:
    def create(backend: str, *, spec: ModelSpec, models_dir: Path, max_concurrency: int | None, probe: Probe,
               sim: Mapping[str, Any], memory_budget: int | None = None,
               lora: Mapping[str, Any] | None = None) -> InferenceEngine:
        try:
            from cynode.engines.embedding_engine import EmbeddingEngine
        except ImportError as exc:
            raise EngineError(f"embedding model {spec.id!r} needs torch and transformers ({exc}); "
                              "install them with `pip install 'cynode[cpu]'`") from exc
        return EmbeddingEngine(_model_dir(spec, models_dir), spec.id, aliases=spec.aliases, backend=backend,
                               device=device)

    return create


def _sim(backend: str, *, spec: ModelSpec, models_dir: Path, max_concurrency: int | None, probe: Probe,
         sim: Mapping[str, Any], memory_budget: int | None = None,
         lora: Mapping[str, Any] | None = None) -> InferenceEngine:
    from cynode.engines.admission import DEFAULT_CONCURRENCY
    from cynode.engines.sim_engine import SimEngine

    # No memory to size by: the ceiling, or the default.
    return SimEngine(spec.id, aliases=spec.aliases, max_concurrency=max_concurrency or DEFAULT_CONCURRENCY,
                     **dict(sim))


def _vllm(backend: str, *, spec: ModelSpec, models_dir: Path, max_concurrency: int | None, probe: Probe,
          sim: Mapping[str, Any], memory_budget: int | None = None,
          lora: Mapping[str, Any] | None = None) -> InferenceEngine:
    # Checked before a model is converted (about 20 s), so a missing piece fails fast.
    if backend == "cuda-vllm" and not probe.cuda():
        raise EngineError(f"backend {backend!r} needs an NVIDIA GPU with CUDA; torch.cuda.is_available() is False here")
    if importlib.util.find_spec("vllm") is None:
        from cynode.engines.vllm_params import missing_vllm_message

        raise EngineError(missing_vllm_message(backend))
    return _vllm_engine(backend, spec, models_dir, max_concurrency, lora)


def _vllm_engine(backend: str, spec: ModelSpec, models_dir: Path, max_concurrency: int | None,
                 lora: Mapping[str, Any] | None) -> InferenceEngine:
    """The same engine on every platform: the installed vLLM (or its Ascend plugin) picks the device.
    With `lora` (`[worker.lora]`) saying `vllm`, vLLM starts with LoRA and hot-loads adapters."""
    from cynode.engines.vllm_engine import VllmEngine

    cpu = backend == "cpu-vllm"
    dtype = spec.dtype if spec.dtype != "auto" else ("float32" if cpu else "auto")
    lora = lora or {}
    return VllmEngine(_model_dir(spec, models_dir), spec.id, aliases=spec.aliases, backend=backend,
                      max_concurrency=max_concurrency, dtype=dtype, kv_cache_gib=2 if cpu else None,
                      max_model_len=spec.context_length, enable_lora=bool(lora.get("vllm")),
                      max_loras=int(lora.get("max_loras", 1)), max_lora_rank=int(lora.get("max_lora_rank", 16)))


def _ascend_vllm(backend: str, *, spec: ModelSpec, models_dir: Path, max_concurrency: int | None, probe: Probe,
                 sim: Mapping[str, Any], memory_budget: int | None = None,
                 lora: Mapping[str, Any] | None = None) -> InferenceEngine:
    missing = [name for name, module in (("torch-npu", "torch_npu"), ("vllm-ascend", "vllm_ascend"), ("vllm", "vllm"))
               if importlib.util.find_spec(module) is None]
    if missing or not probe.npu():
        what = f"{', '.join(missing)} not installed" if missing else "no Ascend NPU visible (torch.npu.is_available() is False)"
        raise EngineError(f"backend {backend!r} needs an Ascend NPU with CANN, torch-npu, vllm and the vllm-ascend "
                          f"plugin; here: {what}")
    return _vllm_engine(backend, spec, models_dir, max_concurrency, lora)  # not yet verified on NPU hardware


def _not_yet(backend: str, **_: Any) -> InferenceEngine:
    raise EngineError(f"backend {backend!r} is not available in this build yet; "
                      "use cpu-transformers (or cuda-transformers on an NVIDIA host)")


_ENGINES: dict[str, Callable[..., InferenceEngine]] = {
    "cpu-transformers": _transformers("cpu"),
    "cuda-transformers": _transformers("cuda"),
    "ascend-transformers": _transformers("npu"),
    "cpu-vllm": _vllm,
    "cuda-vllm": _vllm,
    "ascend-vllm": _ascend_vllm,
    "ascend-mindie": _not_yet,
    "cuda-trtllm": _not_yet,
    "sim": _sim,  # benchmarking only: never chosen by "auto"
    "cpu-embedding": _embedding("cpu"),
    "cuda-embedding": _embedding("cuda"),
    "ascend-embedding": _embedding("npu"),
}


def backend_for(worker_backend: str, spec: ModelSpec, *, probe: Probe | None = None) -> str:
    """The backend one model runs on: its own `backend`; for the built-in model, the worker's; else
    the worker's device family with the model's engine (a `cpu-transformers` worker runs an
    engine-"vllm" registry entry on `cpu-vllm`)."""
    if spec.backend:
        return select_backend(spec.backend, probe=probe)
    worker_backend = select_backend(worker_backend, probe=probe)
    if spec.engine == "sim" or worker_backend == "sim":
        return "sim"
    if spec.engine == "embedding":  # whatever engine the chat models use, embeddings run on transformers
        return f"{worker_backend.split('-')[0]}-embedding"
    if spec.source_kind == "builtin":
        return worker_backend
    family = worker_backend.split("-")[0]
    return f"{family}-{spec.engine}"


def create_engine(backend: str, *, models_dir: Path, max_concurrency: int | None = None, probe: Probe | None = None,
                  sim: Mapping[str, Any] | None = None, spec: ModelSpec | None = None,
                  memory_budget: int | None = None, lora: Mapping[str, Any] | None = None) -> InferenceEngine:
    """An engine (not yet started) serving `spec` (default: the built-in model, or "sim" on the sim
    backend) on `backend`, the
    worker's backend (`[worker] backend`), adjusted by `backend_for` to the model's engine.

    `max_concurrency` is an optional ceiling on the engine's own capacity; `memory_budget` the bytes
    a transformers engine may give its KV cache (default: a share of the device's free memory);
    `lora` the `[worker.lora]` settings (whether vLLM starts with LoRA, and its limits).
    Converting a GGUF model can take ~20 s on first use; call this off the event loop.
    """
    from cynode.engines.registry import builtin_spec, sim_spec

    probe = probe or Probe()
    spec = spec or (sim_spec() if select_backend(backend, probe=probe) == "sim" else builtin_spec())
    chosen = backend_for(backend, spec, probe=probe)
    return _ENGINES[chosen](chosen, spec=spec, models_dir=Path(models_dir), max_concurrency=max_concurrency,
                            probe=probe, sim=sim or {}, memory_budget=memory_budget, lora=lora)

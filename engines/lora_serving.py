"""Serving published fine-tuned adapters as models of their own, hot-loaded without a restart.

A training worker publishes each adapter version under `<training_dir>/adapters/<model id>/<n>/`
and records it in Redis (`cynode.training_store`). A serving worker reads that record and adds one
registry entry per adapter whose base model it serves (`registry_with_adapters`): the entry's id is
the adapter's model id (`<base>:ft-<suffix>-<job>`), its `path` the version folder, so the
registry's version of it (the prompt-cache key's model version) changes with every new version and
the cache never answers a new version with an old one's text. The MemoryManager then loads it on
first use like any model, next to the base model and to other adapters:

- transformers: `AdapterEngine`, the base weights with the PEFT adapter folded in (its own batcher,
  so base and adapters answer side by side);
- other engines: not yet (the entry is skipped, and the log says why).

The adapter's manifest (sha256 of each file) is verified before it is loaded.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from cynode.engines.registry import ModelRegistry, ModelSpec

log = logging.getLogger(__name__)

ADAPTER_SOURCE = "adapter"


def registry_with_adapters(base: ModelRegistry, adapters: dict[str, dict[str, Any]]
                           ) -> tuple[ModelRegistry, dict[str, ModelSpec]]:
    """`base` plus one entry per servable adapter, and each adapter id's base spec."""
    specs = list(base.specs)
    bases: dict[str, ModelSpec] = {}
    for model_id, record in sorted(adapters.items()):
        base_spec = base.resolve(record.get("base", ""))
        path = Path(record.get("path", ""))
        if base_spec is None or model_id in base or not path.is_dir():
            continue
        if base_spec.engine != "transformers":
            log.debug("adapter %s: base %s runs on %s, which cannot hot-load adapters here yet", model_id,
                      base_spec.id, base_spec.engine)
            continue
        specs.append(replace(base_spec, id=model_id, aliases=(), source_kind=ADAPTER_SOURCE, path=path,
                             tags=(*base_spec.tags, "adapter")))
        bases[model_id] = base_spec
    return ModelRegistry(specs, source=base.source, builtin=False), bases


def adapter_engine(spec: ModelSpec, base_dir: Path, *, backend: str, max_concurrency: int | None):
    """The engine serving adapter `spec` on top of the base model folder `base_dir`."""
    device = "cuda" if backend.startswith("cuda") else "npu" if backend.startswith("ascend") else "cpu"
    dtype = "float32" if spec.dtype == "auto" else spec.dtype
    return AdapterEngine(base_dir, spec.path, spec.id, backend=backend, device=device, dtype=dtype,
                         max_concurrency=max_concurrency)


@functools.cache
def _engine_class():
    from cynode.engines.transformers_engine import TransformersEngine

    class _AdapterEngine(TransformersEngine):
        """The base model with one PEFT LoRA adapter folded into its weights, served as its own model."""

        def __init__(self, base_dir: Path, adapter_dir: Path, model_id: str, **kwargs: Any) -> None:
            super().__init__(base_dir, model_id, **kwargs)
            self.adapter_dir = Path(adapter_dir)

        def _load(self) -> None:
            from peft import PeftModel

            from cynode.engines.training.output.manifest import verify_manifest
            from cynode.errors import CynodeError, EngineError

            try:
                verify_manifest(self.adapter_dir)
            except CynodeError as exc:
                raise EngineError(f"adapter {self.model_id}: {exc.message}") from exc
            super()._load()
            try:
                model = PeftModel.from_pretrained(self._model, str(self.adapter_dir), is_trainable=False)
                self._model = model.merge_and_unload().eval()
            except Exception as exc:
                self._model = None
                raise EngineError(f"adapter {self.model_id}: loading {self.adapter_dir} failed: {exc}") from exc

    return _AdapterEngine


def AdapterEngine(*args: Any, **kwargs: Any):  # noqa: N802  (a class built on first use: torch loads lazily)
    return _engine_class()(*args, **kwargs)

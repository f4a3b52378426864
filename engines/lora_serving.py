"""Serving published fine-tuned adapters as models of their own, hot-loaded without a restart.

A training worker publishes each adapter version under `<training_dir>/adapters/<model id>/<n>/`
and records it in Redis (`cynode.training_store`). A serving worker reads that record and adds one
registry entry per adapter whose base model it serves (`registry_with_adapters`): the entry's id is
the adapter's model id (`<base>:ft-<suffix>-<job>`), its `source_kind` "adapter", its `path` the
version folder and its `base` the base model's id. The registry's version of it (the prompt-cache
key's model version) changes with every new version, so the cache never answers a new version with
an old one's text.

The MemoryManager serves such an entry from its base model's engine, which must be a
`ServesAdapters` engine (engines/base.py): the base model's weights are loaded once, and every
adapter is loaded next to them, under its own id, while the engine runs:

- transformers: PEFT adapters on the one base model; each request picks its adapter (or none) per
  row of the running batch (`transformers_engine.py`);
- vLLM: `LoRARequest`s, when the worker starts vLLM with LoRA (`[worker.lora] vllm = true`; rank up
  to `max_lora_rank`).

An adapter counts against the worker's memory budget by its weights (`footprint.adapter_footprint`),
on top of its base model's footprint. The adapter's manifest (sha256 of each file) is verified before it is
loaded (`verify_published_adapter`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from cynode.engines.registry import ModelRegistry, ModelSpec

log = logging.getLogger(__name__)

ADAPTER_SOURCE = "adapter"


def registry_with_adapters(base: ModelRegistry, adapters: dict[str, dict[str, Any]], *,
                           servable: Callable[[ModelSpec], bool] = lambda spec: True) -> ModelRegistry:
    """`base` plus one entry per adapter whose base model is in `base` and `servable` here."""
    specs = list(base.specs)
    for model_id, record in sorted(adapters.items()):
        base_spec = base.resolve(record.get("base", ""))
        path = Path(record.get("path", ""))
        if base_spec is None or model_id in base or not path.is_dir():
            continue
        if not servable(base_spec):
            log.debug("adapter %s: base %s runs on an engine that cannot load adapters here", model_id, base_spec.id)
            continue
        specs.append(replace(base_spec, id=model_id, aliases=(), source_kind=ADAPTER_SOURCE, path=path,
                             tags=(*base_spec.tags, "adapter"), base=base_spec.id))
    return ModelRegistry(specs, source=base.source, builtin=False)


def adapter_rank(path: Path) -> int:
    """The LoRA rank in `path/adapter_config.json`; ValueError/OSError when it is not readable."""
    return int(json.loads((Path(path) / "adapter_config.json").read_text()).get("r", 0))


def verify_published_adapter(path: Path) -> None:
    """Refuse a published adapter whose files do not match its manifest (EngineError); an adapter
    folder without a manifest (one made by hand, or by peft directly) is taken as it is."""
    from cynode.engines.training.output.manifest import MANIFEST, verify_manifest
    from cynode.errors import CynodeError, EngineError

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise EngineError(f"{path} is not a PEFT LoRA adapter folder (no adapter_config.json)")
    if (path / MANIFEST).is_file():
        try:
            verify_manifest(path)
        except CynodeError as exc:
            raise EngineError(exc.message) from exc

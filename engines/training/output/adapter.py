"""The job's result: `<output_dir>/adapter/` with the PEFT files and the manifest, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..loop.checkpoint import save_adapter_files
from .atomic import atomic_folder
from .manifest import write_manifest
from .rules import check_adapter


def adapter_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "adapter"


def write_adapter(model: Any, output_dir: str | Path, *, base_model_id: str, manifest_fields: dict[str, Any],
                  max_lora_rank: int, for_vllm: bool) -> tuple[Path, dict[str, Any]]:
    """Save the model's adapter with its manifest; checked against the serving rules before it appears."""
    target = adapter_dir(output_dir)
    with atomic_folder(target) as tmp:
        save_adapter_files(model, tmp, base_model_id)
        check_adapter(tmp, max_lora_rank=max_lora_rank, for_vllm=for_vllm)
        manifest = write_manifest(tmp, {"kind": "adapter", **manifest_fields})
    return target, manifest

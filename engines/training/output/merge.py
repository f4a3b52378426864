"""`merge`: the adapter folded into the base weights, written as a full model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .atomic import atomic_folder
from .manifest import write_manifest


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, *,
                  manifest_fields: dict[str, Any] | None = None) -> Path:
    """Load the base in its saved dtype, merge the adapter in, save model and tokenizer atomically."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto", local_files_only=True)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    with atomic_folder(Path(out_dir)) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_manifest(tmp, {"kind": "merged", **(manifest_fields or {})})
    return Path(out_dir)

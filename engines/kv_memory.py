"""How many sequences a transformers engine can batch: the KV cache's bytes per token against memory.

    per_token = kv_bytes_per_token(model.config, torch.float32)   # 2 × layers × KV heads × head dim × bytes
    capacity  = batch_capacity(budget_bytes, per_token, context_length, ceiling=None)

Before a model is loaded, `folder_capacity` gives the same figure from its folder's config.json, so
a worker can say what it will admit (in gossip, to the coordinator) before the first request loads it.

A sequence may grow to the model's whole context, so the engine admits as many as fit at that
worst case: `budget // (per_token × context)`, at least 1, at most MAX_BATCH (vLLM's default
`max_num_seqs`) and at most the operator's ceiling (`[worker] max_concurrency`). The batcher then
caps the cache itself at `budget // per_token` tokens and preempts when the padded batch would
outgrow it (see batcher.py), so the figure is a promise the engine keeps, not only an estimate.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

MAX_BATCH = 256  # sequences in one decode step at most, as vLLM's default max_num_seqs


def kv_bytes_per_token(config, itemsize: int) -> int:
    """Bytes one cached token takes across all layers (keys and values) for a model `config`."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = int(getattr(text, "num_attention_heads"))
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return 2 * int(text.num_hidden_layers) * kv_heads * head_dim * int(itemsize)


def batch_capacity(budget_bytes: int, per_token: int, context_length: int, *, ceiling: int | None = None) -> int:
    """Sequences that fit `budget_bytes` of KV cache when each may reach `context_length` tokens."""
    if per_token < 1 or context_length < 1:
        raise ValueError("need per_token >= 1 and context_length >= 1")
    fits = max(1, int(budget_bytes) // (per_token * context_length))
    return max(1, min(fits, MAX_BATCH, ceiling or MAX_BATCH))


def folder_capacity(folder: Path, itemsize: int, budget_bytes: int, *, ceiling: int | None = None) -> int | None:
    """`batch_capacity` of the model in `folder` from its config.json alone (nothing loaded); None
    when the file is missing or does not describe a decoder's attention."""
    try:
        raw = json.loads((Path(folder) / "config.json").read_text())
        text = raw.get("text_config") or raw
        per_token = kv_bytes_per_token(SimpleNamespace(**text), itemsize)
        context = int(text["max_position_embeddings"])
        return batch_capacity(budget_bytes, per_token, context, ceiling=ceiling)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None

"""How much memory a training job needs, from the model's config.json alone (no torch, no weights).

The coordinator uses it to pick a worker with room. It is an estimate with headroom, not a promise:
weights in the training dtype, the adapter with its gradients and AdamW's two moments (fp32),
activations kept for the backward pass (Korthikanti et al.'s s*b*h*(34 + 5*a*s/h) bytes per layer in
16-bit, doubled for fp32; only layer inputs with gradient checkpointing), and the logits with their
fp32 copy and gradient, which dominate for small models with large vocabularies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cynode.errors import TrainingError

_HEADROOM = 1.2  # allocator fragmentation, temporaries, the tokenizer and the Python process itself


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    adapter: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return int((self.weights + self.adapter + self.activations + self.logits) * _HEADROOM)


def estimate_training_memory(model_dir: str | Path, spec: Any, *, dtype_bytes: int | None = None) -> MemoryEstimate:
    """Bytes a JobSpec's training needs on its device (dtype_bytes: 4 for fp32, 2 for bf16/fp16;
    default from spec.dtype, with "auto" counted as fp32, the CPU's choice and the larger)."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{path}: cannot read the model config ({exc})", code="bad_model") from None
    return estimate_from_config(config, spec, dtype_bytes=dtype_bytes)


def estimate_from_config(config: dict[str, Any], spec: Any, *, dtype_bytes: int | None = None) -> MemoryEstimate:
    """The same estimate from an already read config.json (the coordinator gets it from the worker)."""
    config = config.get("text_config", config)
    hidden = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config.get("num_attention_heads", max(1, hidden // 64)))
    inter = int(config.get("intermediate_size", 4 * hidden))
    vocab = int(config["vocab_size"])
    experts = int(config.get("num_local_experts", config.get("num_experts", 1)) or 1)
    size = dtype_bytes or (2 if spec.dtype in ("bfloat16", "float16") else 4)
    hp = spec.hyperparameters
    seqs = hp.batch_size * (2 if spec.method == "dpo" else 1)
    tokens = seqs * hp.max_seq_len

    params = vocab * hidden * (1 if config.get("tie_word_embeddings", True) else 2)
    params += layers * (4 * hidden * hidden + 3 * hidden * inter * experts)
    weights = params * size
    # LoRA on every projection: r * (in + out) per matrix, seven matrices per layer at most.
    lora_params = layers * 7 * spec.lora.r * (hidden + max(hidden, inter))
    adapter = lora_params * 4 * 4  # weights, gradients, two AdamW moments, all fp32
    per_layer = tokens * hidden * (34 + 5 * heads * hp.max_seq_len / hidden) * (size / 2)
    activations = int(per_layer * layers if not spec.gradient_checkpointing
                      else tokens * hidden * size * layers + per_layer)
    logits = tokens * vocab * (size + 4 + 4)  # logits, their fp32 copy for the loss, its gradient
    return MemoryEstimate(weights=int(weights), adapter=int(adapter), activations=activations, logits=int(logits))

"""LoRA target modules per architecture, checked against the model actually loaded.

The defaults are the attention and MLP projections that are plain `nn.Linear` layers in
transformers and that vLLM can serve LoRA on. Mixture-of-experts models (mixtral, qwen3_moe) keep
their experts in fused 3-D parameters, not linear layers, so their default is attention only (the
router stays frozen: vLLM does not serve LoRA on it).
"""

from __future__ import annotations

from typing import Any

from cynode.errors import TrainingError

_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_GATED_MLP = ("gate_proj", "up_proj", "down_proj")

DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": _ATTN + _GATED_MLP,
    "mistral": _ATTN + _GATED_MLP,
    "mixtral": _ATTN,
    "qwen2": _ATTN + _GATED_MLP,
    "qwen3": _ATTN + _GATED_MLP,
    "qwen3_moe": _ATTN,
    "gemma2": _ATTN + _GATED_MLP,
    "gemma3_text": _ATTN + _GATED_MLP,
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "glm4": _ATTN + ("gate_up_proj", "down_proj"),
    "starcoder2": _ATTN + ("c_fc", "c_proj"),
}
ARCHITECTURES = tuple(DEFAULT_TARGETS)
_NEVER = ("lm_head",)  # the output head: vLLM serves no LoRA there, and it ties to the embeddings


def linear_module_names(model: Any) -> set[str]:
    """Last name parts of every linear layer in the model (what PEFT's target_modules match)."""
    import torch

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name}


def resolve_targets(model: Any, targets: str | list[str]) -> list[str]:
    """The target module names for `model` ("default", "all-linear" or an explicit list).

    Raises TrainingError `unknown_architecture` when "default" is asked for an architecture with no
    table, and `bad_targets` when a name matches no linear layer of the loaded model.
    """
    model_type = getattr(model.config, "model_type", "")
    present = linear_module_names(model)
    if targets == "all-linear":
        names = sorted(present - set(_NEVER))
    elif targets == "default":
        if model_type not in DEFAULT_TARGETS:
            raise TrainingError(
                f"architecture {model_type!r} has no LoRA target table (known: {', '.join(ARCHITECTURES)}); "
                "set lora.targets to \"all-linear\" or to a list of module names",
                code="unknown_architecture",
            )
        names = list(DEFAULT_TARGETS[model_type])
    else:
        names = list(dict.fromkeys(targets))
    missing = [n for n in names if n not in present]
    if missing:
        raise TrainingError(
            f"LoRA targets {', '.join(missing)} match no linear layer of this {model_type or 'model'} "
            f"(its linear layers: {', '.join(sorted(present))})",
            code="bad_targets",
        )
    if not names:
        raise TrainingError(f"this {model_type or 'model'} has no linear layer to put LoRA on", code="bad_targets")
    return names

"""Will the serving engines load this adapter? vLLM's LoRA rules, checked before publishing.

The rules mirror vLLM's `PEFTHelper` (vllm/lora/peft_helper.py): rank at most `max_lora_rank`, no
DoRA, no LoRA bias, no `modules_to_save`, a plain initialisation; and LoRA only on the decoder's
linear layers (vLLM serves none on the embeddings or the output head). The transformers engine
loads anything peft loads, so for it only the files and the rank limit are checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from cynode.errors import TrainingError

from ..spec import VLLM_LORA_RANKS

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal", "mica", "lora_ga")
_NO_LORA_IN_VLLM = ("lm_head", "embed_tokens", "wte", "word_embeddings")


def adapter_problems(folder: str | Path, *, max_lora_rank: int = 16, for_vllm: bool = True) -> list[str]:
    """Every reason the adapter folder would be refused; empty when it is servable."""
    folder = Path(folder)
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        return [f"{config_path} is missing"]
    if not (folder / ADAPTER_WEIGHTS).is_file():
        return [f"{folder / ADAPTER_WEIGHTS} is missing"]
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        return [f"{config_path}: not valid JSON ({exc.msg})"]
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, not LORA")
    ranks = [config.get("r", 0), *(config.get("rank_pattern") or {}).values()]
    if max(ranks) > max_lora_rank:
        problems.append(f"rank {max(ranks)} is above the serving max_lora_rank {max_lora_rank}")
    if not for_vllm:
        return problems
    if max_lora_rank not in VLLM_LORA_RANKS:
        problems.append(f"max_lora_rank {max_lora_rank} is not one of vLLM's ranks {VLLM_LORA_RANKS}")
    if config.get("use_dora"):
        problems.append("it is a DoRA adapter, which vLLM does not serve")
    if config.get("lora_bias"):
        problems.append("it has LoRA bias (lora_bias), which vLLM does not serve")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config.get('bias')!r}; vLLM serves only bias \"none\"")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} are full copies vLLM does not serve")
    if config.get("init_lora_weights", True) not in _PLAIN_INITS:
        problems.append(f"init_lora_weights {config['init_lora_weights']!r} changes the base weights")
    if config.get("layer_replication"):
        problems.append("layer_replication is not served by vLLM")
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    bad = [t for t in targets if t.rsplit(".", 1)[-1] in _NO_LORA_IN_VLLM]
    if bad:
        problems.append(f"LoRA on {', '.join(bad)}, where vLLM serves none")
    return problems


def check_adapter(folder: str | Path, *, max_lora_rank: int = 16, for_vllm: bool = True) -> None:
    """Raise TrainingError(code="adapter_not_servable") naming every problem."""
    problems = adapter_problems(folder, max_lora_rank=max_lora_rank, for_vllm=for_vllm)
    if problems:
        raise TrainingError(f"adapter {folder} cannot be served: " + "; ".join(problems),
                            code="adapter_not_servable")

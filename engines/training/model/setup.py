"""Load the base model and tokenizer for training and put a LoRA adapter on it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cynode.errors import TrainingError

from .device import resolve_device, resolve_dtype, seed_all
from .targets import resolve_targets


@dataclass
class LoadedModel:
    model: Any
    """A peft PeftModel in train mode, on `device`."""
    tokenizer: Any
    device: str
    dtype: str
    model_type: str
    target_modules: list[str]
    trainable_params: int
    total_params: int
    seconds: float


def load_tokenizer(model_dir: str | Path) -> Any:
    """The model folder's tokenizer, with a pad token (EOS when it defines none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"model folder {model_dir}: cannot load its tokenizer: {exc}", code="bad_model") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_dir: str | Path, *, device: str = "cpu", dtype: str = "auto",
                    gradient_checkpointing: bool = False) -> Any:
    """The base causal LM on `device`, in the training dtype, its own weights frozen."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars would flood the job's log
    torch_dtype = resolve_dtype(dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"model folder {model_dir}: cannot load the model: {exc}", code="bad_model") from None
    model.to(device)
    model.config.use_cache = False  # training never reuses a KV cache
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def attach_lora(model: Any, lora: Any, *, seed: int) -> tuple[Any, list[str]]:
    """Wrap `model` in a fresh LoRA adapter (`lora`: LoraSettings); returns (peft model, targets)."""
    from peft import LoraConfig, get_peft_model

    targets = resolve_targets(model, lora.targets)
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
        use_dora=lora.use_dora, use_rslora=lora.use_rslora, bias="none", task_type="CAUSAL_LM",
    )
    seed_all(seed)  # the adapter's initial A matrices are drawn here
    peft_model = get_peft_model(model, config)
    if getattr(model, "is_gradient_checkpointing", False):
        peft_model.enable_input_require_grads()
    peft_model.train()
    return peft_model, targets


def setup_model(spec: Any, tokenizer: Any = None) -> LoadedModel:
    """Tokenizer (unless given), base model and a new adapter for a JobSpec, on its device."""
    started = time.perf_counter()
    device = resolve_device(spec.device)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(spec.model_dir)
    base = load_base_model(spec.model_dir, device=device, dtype=spec.dtype,
                           gradient_checkpointing=spec.gradient_checkpointing)
    model, targets = attach_lora(base, spec.lora, seed=spec.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return LoadedModel(
        model=model, tokenizer=tokenizer, device=device, dtype=str(base.dtype).removeprefix("torch."),
        model_type=getattr(base.config, "model_type", ""), target_modules=targets,
        trainable_params=trainable, total_params=total, seconds=time.perf_counter() - started,
    )

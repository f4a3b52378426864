"""Model setup for training: device and dtype, base model and tokenizer, LoRA targets per architecture."""

from .device import peak_memory, resolve_device, resolve_dtype, rng_state, seed_all, set_rng_state, synchronize
from .memory import MemoryEstimate, estimate_training_memory
from .setup import LoadedModel, attach_lora, load_base_model, load_tokenizer, setup_model
from .targets import ARCHITECTURES, DEFAULT_TARGETS, linear_module_names, resolve_targets

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_TARGETS",
    "LoadedModel",
    "MemoryEstimate",
    "attach_lora",
    "estimate_training_memory",
    "linear_module_names",
    "load_base_model",
    "load_tokenizer",
    "peak_memory",
    "resolve_device",
    "resolve_dtype",
    "resolve_targets",
    "rng_state",
    "seed_all",
    "set_rng_state",
    "setup_model",
    "synchronize",
]

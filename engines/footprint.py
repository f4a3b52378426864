"""How many bytes a model, or a LoRA adapter on it, takes once loaded: what the MemoryManager
reserves in the worker's memory budget before it loads either."""

from __future__ import annotations

import json
from pathlib import Path

from cynode.engines.registry import ModelSpec

# Beyond the weights: activations, the KV cache of a modest batch, the tokenizer, allocator slack.
# A guess on the safe side for the small models a CPU worker serves; pass your own `footprint` to tune.
FIXED_OVERHEAD = 256 * 2**20
# The built-in SmolLM2-135M-Instruct has about 134.5 M parameters; its folder may not exist before
# its first load (it is converted then), so its size is known, not measured.
BUILTIN_PARAMS = 134_515_008
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float64": 8, "int8": 1}
# Bytes per parameter of common GGUF quantisations, read from the file name ("...Q4_K_M.gguf").
# An unknown name is taken as 4-bit, the most common and, by assuming the most parameters per byte,
# the largest estimate.
_GGUF_BYTES = (("q2", 0.33), ("q3", 0.43), ("q4", 0.56), ("q5", 0.69), ("q6", 0.82), ("q8", 1.06),
               ("bf16", 2.0), ("f16", 2.0), ("f32", 4.0))


def estimate_footprint(spec: ModelSpec) -> int:
    """Bytes the model will take once loaded: weights as loaded, plus FIXED_OVERHEAD.

    Weights as loaded = parameters × bytes per parameter of the load dtype, where parameters =
    total size of the weight files / bytes per parameter of the stored dtype (config.json's
    `dtype`/`torch_dtype` for a folder, the quantisation in the file name for a GGUF, which
    transformers dequantises on load). The load dtype "auto" counts as float32, what the
    transformers engine uses on CPU. The `sim` engine holds no weights and counts 0.
    """
    if spec.engine == "sim":
        return 0
    load_bytes = DTYPE_BYTES.get(spec.dtype, 4)
    if spec.source_kind == "builtin" or spec.path is None:
        return int(BUILTIN_PARAMS * load_bytes) + FIXED_OVERHEAD
    if spec.source_kind == "gguf":
        name = spec.path.name.lower()
        stored = next((b for tag, b in _GGUF_BYTES if tag in name), 0.56)
        size = spec.path.stat().st_size if spec.path.is_file() else 0
        return int(size / stored * load_bytes) + FIXED_OVERHEAD
    size = sum(p.stat().st_size for p in spec.path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return int(size / _stored_bytes(spec.path) * load_bytes) + FIXED_OVERHEAD


def _stored_bytes(folder: Path) -> int:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return 4
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return DTYPE_BYTES.get(str(dtype).removeprefix("torch."), 4)


ADAPTER_OVERHEAD = 1 << 20  # PEFT's per-adapter bookkeeping and the layers' dropout/scaling entries


def adapter_footprint(spec: ModelSpec) -> int:
    """Bytes adapter `spec` adds to its base model's engine: its weight files, as stored.

    PEFT keeps the adapter's A and B matrices in the dtype they were saved in (cynode trains in
    float32), and vLLM copies them into its own LoRA slots; so the files' size is what one loaded
    adapter holds, and a pessimistic figure for a bfloat16 engine.
    """
    files = [p for p in Path(spec.path).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    return sum(p.stat().st_size for p in files) + ADAPTER_OVERHEAD

"""The one place training asks what accelerator it runs on: cpu, cuda[:N] or npu[:N].

torch_npu is imported only when an NPU is asked for (or "auto" finds it installed); everything else
goes through torch's own per-backend modules, so the trainer never branches on the device itself.
"""

from __future__ import annotations

import importlib.util
import os
import random
from typing import Any

from cynode.errors import TrainingError

_DTYPES = ("float32", "bfloat16", "float16")


def _backend(kind: str) -> Any:
    import torch

    if kind == "npu" and importlib.util.find_spec("torch_npu") is not None:
        import torch_npu  # noqa: F401  (registers torch.npu)
    return getattr(torch, kind, None)


def resolve_device(name: str = "auto") -> str:
    """A concrete device string for `name`; TrainingError when this host does not have it."""
    if name == "auto":
        for kind in ("cuda", "npu"):
            if kind == "npu" and importlib.util.find_spec("torch_npu") is None:
                continue
            backend = _backend(kind)
            if backend is not None and backend.is_available():
                return f"{kind}:0"
        return "cpu"
    kind, _, index = name.partition(":")
    if kind == "cpu" and not index:
        return "cpu"
    if kind not in ("cuda", "npu") or (index and not index.isdigit()):
        raise TrainingError(f"device {name!r} is not a device (expected auto, cpu, cuda[:N] or npu[:N])",
                            code="invalid_job")
    backend = _backend(kind)
    if backend is None or not backend.is_available():
        raise TrainingError(f"device {name!r} is not available on this host", code="device_unavailable")
    n = int(index or 0)
    if n >= backend.device_count():
        raise TrainingError(f"device {name!r}: this host has {backend.device_count()} {kind} devices",
                            code="device_unavailable")
    return f"{kind}:{n}"


def resolve_dtype(requested: str, device: str) -> Any:
    """torch dtype for training: auto is bfloat16 on an accelerator that supports it, else float32.

    float32 on the CPU: bfloat16 matmuls there are several times slower without AVX-512 BF16.
    """
    import torch

    if requested != "auto":
        if requested not in _DTYPES:
            raise TrainingError(f"dtype {requested!r} (expected auto or one of {', '.join(_DTYPES)})", code="invalid_job")
        return getattr(torch, requested)
    kind = device.partition(":")[0]
    if kind == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if kind == "npu":
        return torch.bfloat16
    return torch.float32


def peak_memory(device: str) -> int:
    """Peak memory the job allocated on an accelerator, or this process's resident memory on the CPU."""
    kind = device.partition(":")[0]
    if kind == "cpu":
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)
    backend = _backend(kind)
    return int(backend.max_memory_allocated(device))


def seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)  # seeds every accelerator's generator too


def rng_state(device: str) -> dict[str, Any]:
    """Every random generator training draws from, to resume with the same dropout masks."""
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    kind = device.partition(":")[0]
    if kind != "cpu":
        state[kind] = _backend(kind).get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: str) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind = device.partition(":")[0]
    if kind != "cpu" and kind in state:
        _backend(kind).set_rng_state(state[kind], device)


def synchronize(device: str) -> None:
    """Wait for queued accelerator work, so step timings measure the work, not its queueing."""
    kind = device.partition(":")[0]
    if kind != "cpu":
        _backend(kind).synchronize(device)

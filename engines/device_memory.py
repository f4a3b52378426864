"""How much memory a device has and uses: what the worker budgets models against and publishes.

torch (and torch_npu) are imported only when asked about an accelerator, so a CPU-only worker pays
nothing; CPU figures come from psutil.
"""

from __future__ import annotations

import importlib.util


def device_memory(device: str = "cpu") -> tuple[int, int]:
    """(used, total) bytes of `device`: "cpu", "cuda", "cuda:1", "npu", "npu:0".

    Accelerators report through `mem_get_info` (free and total of the whole device, other processes
    included); the CPU reports system memory (total minus available). Raises ValueError for a device
    this host does not have.
    """
    kind, _, index = device.partition(":")
    if kind == "cpu":
        import psutil

        vm = psutil.virtual_memory()
        return vm.total - vm.available, vm.total
    if kind not in ("cuda", "npu"):
        raise ValueError(f"unknown device {device!r} (expected cpu, cuda[:N] or npu[:N])")
    import torch

    if kind == "npu" and importlib.util.find_spec("torch_npu") is not None:
        import torch_npu  # noqa: F401  (registers torch.npu)
    backend = getattr(torch, kind, None)
    if backend is None or not backend.is_available():
        raise ValueError(f"device {device!r} is not available on this host")
    free, total = backend.mem_get_info(int(index) if index else backend.current_device())
    return int(total - free), int(total)


def free_memory(device: str = "cpu") -> int:
    """Bytes of `device` not in use right now."""
    used, total = device_memory(device)
    return total - used

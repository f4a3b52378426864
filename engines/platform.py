"""The one place device facts come from: which backends exist, what this host has, how much memory
its device holds and how busy it is (vLLM's `platforms/` is the model).

    BACKENDS           every backend name (node.toml's `[worker] backend` accepts these and "auto")
    Probe              what accelerators the host has; tests pass their own to pretend to be another host
    select_backend     "auto" -> the best backend this host can run
    platform_of        the `Platform` (cpu, cuda, npu) a backend runs on
    device_platform    the `Platform` of a torch device name ("cpu", "cuda:1", "npu")
    Platform           free memory, memory in use and utilisation of that device; `torch_device`
                       readies torch for it (torch_npu registers "npu") and returns the device

Nothing heavy is imported here: torch (and torch_npu, pynvml) only when an accelerator is asked
about, so a gateway or a CPU worker pays nothing. On a CPU host the "device" figures are the
process's: its resident memory and its CPU share (what `worker_gpu_memory_used` and
`worker_gpu_utilization` report there).
"""

from __future__ import annotations

import threading

import importlib.util
import os

from cynode.errors import EngineError

__all__ = ["BACKENDS", "Platform", "Probe", "device_platform", "platform_of", "select_backend"]

BACKENDS = (
    "cpu-transformers", "cuda-transformers", "ascend-transformers",
    "cpu-vllm", "cuda-vllm", "ascend-vllm",
    "ascend-mindie", "cuda-trtllm", "sim",
)


class Probe:
    """What the host has. Tests pass their own instance to pretend to be another host."""

    def cuda(self) -> bool:
        try:
            import torch
        except ImportError:
            return False
        return bool(torch.cuda.is_available())

    def npu(self) -> bool:
        if importlib.util.find_spec("torch_npu") is None:
            return False
        try:
            import torch
            import torch_npu  # noqa: F401  (registers torch.npu)
        except Exception:  # a broken CANN install must not stop a CPU-only start
            return False
        return bool(getattr(torch, "npu", None) and torch.npu.is_available())


def select_backend(requested: str, *, probe: Probe | None = None) -> str:
    """Resolve "auto" to what this host can run; a known backend name is returned as-is."""
    requested = requested.strip().lower()
    if requested != "auto":
        if requested not in BACKENDS:
            raise EngineError(f"unknown backend {requested!r}; expected auto or one of {', '.join(BACKENDS)}")
        return requested
    probe = probe or Probe()
    if probe.cuda():
        return "cuda-transformers"
    if probe.npu():
        return "ascend-transformers"
    return "cpu-transformers"


class Platform:
    """A device family's memory and utilisation figures. The CPU's are the base class's."""

    name = "cpu"
    torch_device_name = "cpu"

    def __init__(self) -> None:
        self._process = None

    def torch_device(self, name: str | None = None):
        """The torch device `name` (default: this family's), after whatever torch needs to know it."""
        import torch

        return torch.device(name or self.torch_device_name)

    def free_memory(self) -> int:
        """Bytes the device can still give (the host's MemAvailable on the CPU)."""
        return _mem_available()

    def memory_used(self) -> float:
        """Bytes in use on the device (this process's resident memory on the CPU)."""
        return _resident_bytes()

    def utilization(self) -> float:
        """Percent busy since the last reading (this process's CPU use on the CPU)."""
        return self._cpu_percent()

    def _cpu_percent(self) -> float:
        if self._process is None:
            try:
                import psutil
            except ImportError:  # psutil comes with the `cpu` extra; without it the reading is 0
                return 0.0
            self._process = psutil.Process()
            self._process.cpu_percent()  # the first reading only sets the baseline
        return float(self._process.cpu_percent())


class _TorchAccelerator(Platform):
    """CUDA and Ascend NPU share torch's `mem_get_info`; utilisation needs the vendor's library."""

    def _backend(self):
        import torch

        if self.name == "npu":
            import torch_npu  # noqa: F401  (registers torch.npu)
        return getattr(torch, self.torch_device_name)

    def torch_device(self, name: str | None = None):
        self._backend()  # on the NPU this imports torch_npu, which registers the device with torch
        return super().torch_device(name)

    def _mem_info(self) -> tuple[int, int]:
        backend = self._backend()
        free, total = backend.mem_get_info(backend.current_device())
        return int(free), int(total)

    def free_memory(self) -> int:
        return self._mem_info()[0]

    def memory_used(self) -> float:
        free, total = self._mem_info()
        return float(total - free)

    def utilization(self) -> float:
        return 0.0


class CudaPlatform(_TorchAccelerator):
    """NVIDIA: memory through torch, utilisation through NVML (the `cuda` extra: nvidia-ml-py)."""

    name = "cuda"
    torch_device_name = "cuda"

    def __init__(self) -> None:
        super().__init__()
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
        except Exception:  # no package or no driver: utilisation reads 0
            self._nvml = None

    def memory_used(self) -> float:
        if self._nvml is not None:
            pynvml, handle = self._nvml
            return float(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        return super().memory_used()

    def utilization(self) -> float:
        if self._nvml is None:
            return 0.0
        pynvml, handle = self._nvml
        return float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)


class NpuPlatform(_TorchAccelerator):
    """Ascend: memory through torch_npu. Not yet verified on NPU hardware."""

    name = "npu"
    torch_device_name = "npu"


def platform_of(backend: str) -> Platform:
    """The device family a backend runs on (`sim` and the CPU backends: the CPU)."""
    family = backend.split("-", 1)[0]
    if family == "cuda":
        return CudaPlatform()
    if family == "ascend":
        return NpuPlatform()
    return Platform()


def device_platform(device: str) -> Platform:
    """The Platform of a torch device name: "cuda" and "cuda:1" are CUDA, "npu..." Ascend, else the CPU."""
    family = str(device).split(":", 1)[0]
    if family == "cuda":
        return CudaPlatform()
    if family == "npu":
        return NpuPlatform()
    return Platform()


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _resident_bytes() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0.0


# transformers builds a model under a process-wide default device ("meta", then the weights are
# copied in): two loads in two threads at once interleave that state, and both fail with "Cannot
# copy out of meta tensor" (seen when a worker loaded two models on first use at the same time), the
# default device staying wrong for every later load. Every Hugging Face load in this process takes
# this lock.
HF_LOAD_LOCK = threading.Lock()

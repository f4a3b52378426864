"""A model's place in the MemoryManager (`ModelSlot`, `AdapterSlot`) and the adapter half of its rules.

`AdapterLoading` is the part of `MemoryManager` (memory_manager.py, whose docstring has the rules)
that loads LoRA adapters into a base model's engine: single-flight, their footprint reserved on top
of the base's under the manager's budget lock. It relies on the manager's `_budget_lock`,
`_make_room` and `_split_kv`, and is not used on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from cynode.engines.admission import AdmissionGate
from cynode.engines.base import InferenceEngine, ServesAdapters
from cynode.engines.footprint import adapter_footprint
from cynode.engines.lora_serving import verify_published_adapter
from cynode.engines.registry import ModelSpec, source_fingerprint
from cynode.errors import CynodeError, EngineError

log = logging.getLogger("cynode.engines.memory_manager")  # one logger for the manager's messages


@dataclass(eq=False)
class AdapterSlot:
    """One adapter in its base model's engine."""

    spec: ModelSpec
    footprint: int = 0  # counted in the base slot's footprint too
    loaded: bool = False
    loading: asyncio.Task | None = None
    in_use: int = 0
    retired: bool = False  # left the registry: unload once idle


@dataclass(eq=False)
class ModelSlot:
    """One model's place on this worker: its engine (when loaded), its users and its queue."""

    spec: ModelSpec
    gate: AdmissionGate
    engine: InferenceEngine | None = None
    loading: asyncio.Task | None = None
    footprint: int = 0  # reserved while loading, held while loaded
    in_use: int = 0  # users inside `use`, including those waiting for the load
    waiting: int = 0  # users queued behind the concurrency limit
    last_used: float = 0.0
    retired: bool = False  # gone from the registry (or changed): unload once idle
    fingerprint: list = field(default_factory=list)
    adapters: dict[str, AdapterSlot] = field(default_factory=dict)  # by adapter id; their users count in in_use
    kv_taker: bool = False  # its engine sizes its KV cache by the share it is given (set_kv_budget)
    kv_share: int = 0  # bytes of the budget its KV cache may use now


class AdapterLoading:
    """LoRA adapters in their base model's engine; a base class of MemoryManager."""

    def _describe_adapter(self, spec: ModelSpec) -> dict:
        slot = self._slots.get(spec.base)
        adapter = slot.adapters.get(spec.id) if slot else None
        loaded = bool(adapter and adapter.loaded and slot.engine is not None)
        return {"id": spec.id, "loaded": loaded, "loading": bool(adapter and adapter.loading),
                "in_use": adapter.in_use if adapter else 0, "waiting": 0,
                "last_used": slot.last_used if loaded and slot.last_used else None,
                "footprint": adapter.footprint if loaded else None, "retiring": False, "base": spec.base}

    async def _ensure_adapter(self, slot: ModelSlot, spec: ModelSpec) -> AdapterSlot:
        """Adapter `spec` loaded (at its current path) in `slot`'s engine; single-flight, shielded."""
        while True:
            adapter = slot.adapters.get(spec.id)
            if adapter is None:
                adapter = slot.adapters[spec.id] = AdapterSlot(spec)
            if adapter.loaded and adapter.spec.path == spec.path:
                adapter.retired = False
                return adapter
            if adapter.loading is None:
                adapter.loading = asyncio.create_task(self._load_adapter(slot, adapter, spec),
                                                      name=f"load-adapter-{spec.id}")
                adapter.loading.add_done_callback(lambda task, a=adapter: self._adapter_done(a, task))
            await asyncio.shield(adapter.loading)

    def _adapter_done(self, adapter: AdapterSlot, task: asyncio.Task) -> None:
        adapter.loading = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("loading adapter %s failed: %s", adapter.spec.id, task.exception())

    async def _load_adapter(self, slot: ModelSlot, adapter: AdapterSlot, spec: ModelSpec) -> None:
        engine = slot.engine
        if not isinstance(engine, ServesAdapters):
            raise EngineError(f"model {spec.id}: its base model {slot.spec.id} runs on {engine.backend}, whose engine "
                              "here cannot serve LoRA adapters (for vLLM: set [worker.lora] vllm = true)")
        try:
            await asyncio.to_thread(verify_published_adapter, spec.path)
            need = int(await asyncio.to_thread(adapter_footprint, spec))
        except OSError as exc:
            raise EngineError(f"model {spec.id}: cannot read its files: {exc}") from exc
        async with self._budget_lock:
            # A new version replaces the old one: only the difference is new.
            await self._make_room(slot, need - adapter.footprint, what=f"adapter {spec.id} onto {slot.spec.id}")
            slot.footprint += need - adapter.footprint
            adapter.footprint = need
            self._split_kv()  # the adapter's weights come out of the KV memory of every model
        try:
            log.info("loading adapter %s into %s (about %s)", spec.id, slot.spec.id, size_text(need))
            started = time.monotonic()
            await engine.load_adapter(spec.id, spec.path)
            log.info("adapter %s loaded in %.2f s", spec.id, time.monotonic() - started)
        except BaseException as exc:
            slot.footprint -= adapter.footprint
            adapter.footprint, adapter.loaded = 0, False
            slot.adapters.pop(spec.id, None)
            self._split_kv()
            with contextlib.suppress(Exception):
                await engine.unload_adapter(spec.id)
            if isinstance(exc, CynodeError) or not isinstance(exc, Exception):
                raise
            raise EngineError(f"model {spec.id}: loading the adapter failed: {exc}") from exc
        adapter.spec, adapter.loaded, adapter.retired = spec, True, False

    async def _unload_adapter(self, slot: ModelSlot, adapter: AdapterSlot) -> None:
        if slot.adapters.get(adapter.spec.id) is not adapter:
            return
        del slot.adapters[adapter.spec.id]
        slot.footprint -= adapter.footprint
        self._split_kv()
        if adapter.loaded and slot.engine is not None:
            try:
                await slot.engine.unload_adapter(adapter.spec.id)
            except CynodeError as exc:
                log.warning("unloading adapter %s: %s", adapter.spec.id, exc.message)
        log.info("adapter %s unloaded from %s", adapter.spec.id, slot.spec.id)


def same_load(slot: ModelSlot, new: ModelSpec) -> bool:
    """Whether the loaded engine still serves `new`: same source, engine and load settings, same files."""
    old = slot.spec
    same = (old.source_kind, old.path, old.engine, old.backend, old.dtype, old.context_length) == \
           (new.source_kind, new.path, new.engine, new.backend, new.dtype, new.context_length)
    return same and (slot.engine is None or slot.fingerprint == source_fingerprint(new))


def size_text(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"

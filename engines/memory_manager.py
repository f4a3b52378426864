"""The MemoryManager: which registry models are loaded on this worker, within a memory budget.

    async with manager.use("tiny-a") as (engine, spec):   # loads on first use
        async for delta in engine.generate(request): ...

Rules, in the order a request meets them:
- A name the registry does not know is a 404 (`model_not_found`).
- Each model admits as many users at once as its engine batches (`InferenceEngine.capacity()`:
  for transformers, what its KV cache fits in memory; for vLLM, its scheduler's limit), under the
  optional ceiling `per_model_concurrency`; later ones queue first in, first out (an
  `AdmissionGate` per model), so `use` blocks while the model is full. Until a model is loaded the
  limit is provisional: for a transformers model folder, the capacity its config.json gives at the
  KV share it would get if loaded now (`kv_memory.folder_capacity`); otherwise the ceiling, or
  DEFAULT_CONCURRENCY.
- Loading is single-flight: however many requests arrive for a model that is not loaded, one load
  runs and all of them await it. The load is a task of the manager's, shielded from its waiters, so
  one client going away does not cancel the load for the others. A failed load leaves nothing
  behind: every waiter gets the error and the next request tries again.
- The budget is counted once. Each loaded model's footprint (weights and overhead) is reserved; what
  is left is the KV memory, split equally between the loaded engines that size their cache by it
  (`InferenceEngine.set_kv_budget`: transformers; vLLM sizes its own, whose pre-allocated bytes,
  `own_kv_bytes`, join its footprint; sim has none). A load shrinks the
  others' shares as its weights are reserved, an unload gives its share back to the rest, and each
  model's admission limit follows its engine's capacity at its current share.
- Before a load the model's footprint is estimated (`estimate_footprint`, or the function passed in).
  If it does not fit the budget next to what is loaded or loading, the least recently used idle
  models (no user inside `use`) are unloaded until it does. A model in use is never evicted: when the
  idle ones are not enough, the load fails with a retryable EngineError naming the busy models.
- `update_registry` (SIGHUP) swaps the registry: new models become usable at once; a model that left
  the registry, or whose source changed, stops taking new requests and is unloaded once its last
  user leaves (or by the next `reap_idle`, for one that was already idle).
- `reap_idle` unloads models nobody used for `idle_unload` seconds; the worker calls it periodically.
- A LoRA adapter entry (`spec.base` set, engines/lora_serving.py) is no engine of its own: its
  requests queue at its base model's gate (they share its batch), the base model is loaded as for
  any request, and the adapter is loaded into the base's engine (`ServesAdapters`) on first use,
  single-flight, its footprint (`adapter_footprint`) reserved on top of the base's in the same
  budget. Evicting the base model unloads its adapters with it; an adapter that leaves the registry
  is unloaded from the engine once idle, and a new version (new path) replaces the old on next use.

The slots and the adapter half of these rules live in model_slots.py (`AdapterLoading`), the KV
shares and admission limits in kv_share.py (`KVSharing`): both base classes of MemoryManager.
Everything runs on one event loop; the budget lock serialises the decision "evict these, reserve
that" and the evictions themselves, so two loads never both count on the same freed memory. Model
work (the factory, engine start and close) runs off the loop in the engines' own threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from cynode.engines.admission import DEFAULT_CONCURRENCY, AdmissionGate
from cynode.engines.base import InferenceEngine
from cynode.engines.footprint import DTYPE_BYTES, estimate_footprint  # noqa: F401  (importable from here)
from cynode.engines.kv_share import KVSharing
from cynode.engines.model_slots import AdapterLoading, ModelSlot, same_load, size_text
from cynode.engines.registry import ModelRegistry, ModelSpec, source_fingerprint
from cynode.errors import CynodeError, EngineError, RequestError

log = logging.getLogger(__name__)

class MemoryManager(AdapterLoading, KVSharing):
    """Loads registry models on demand within `budget_bytes`; see the module docstring for the rules."""

    def __init__(self, registry: ModelRegistry, *, budget_bytes: int,
                 factory: Callable[[ModelSpec], InferenceEngine],
                 footprint: Callable[[ModelSpec], int] = estimate_footprint,
                 idle_unload: float | None = None, per_model_concurrency: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if budget_bytes < 1 or (per_model_concurrency is not None and per_model_concurrency < 1) or \
                (idle_unload is not None and idle_unload < 0):
            raise ValueError("need budget_bytes >= 1, per_model_concurrency >= 1 or None and idle_unload >= 0 or None")
        self._registry = registry
        self.budget_bytes = budget_bytes
        self._factory = factory
        self._footprint = footprint
        self._idle_unload = idle_unload
        self._per_model = per_model_concurrency
        self._clock = clock
        self._slots: dict[str, ModelSlot] = {}  # by model id, for the current registry
        self._retiring: list[ModelSlot] = []  # loaded models that left the registry and still have users
        self._estimates: dict[ModelSpec, int] = {}  # footprints of models not loaded, for provisional limits
        self._budget_lock = asyncio.Lock()
        self._closed = False

    @property
    def registry(self) -> ModelRegistry:
        return self._registry

    @property
    def used_bytes(self) -> int:
        """Footprint of what is loaded or loading."""
        return sum(s.footprint for s in self._all_slots())

    # using -------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[tuple[InferenceEngine, ModelSpec]]:
        """Hold the model `name` (id or alias) for one request, loading it if needed.

        Raises RequestError(404) for an unknown name and EngineError when the model cannot be
        loaded (retryable when busy models hold the memory it needs).
        """
        while True:
            slot, spec = self._slot_of(name)
            slot.waiting += 1
            try:
                await slot.gate.acquire()
            finally:
                slot.waiting -= 1
            if not slot.retired:
                break
            slot.gate.release()  # the registry changed while we queued: queue for the new model
        slot.in_use += 1
        adapter = None
        try:
            engine = await self._ensure_loaded(slot)
            if spec.base is not None:
                adapter = await self._ensure_adapter(slot, spec)
                adapter.in_use += 1
            yield engine, spec
        finally:
            slot.in_use -= 1
            slot.last_used = self._clock()
            slot.gate.release()
            if adapter is not None:
                adapter.in_use -= 1
                if adapter.retired and adapter.in_use == 0:
                    await self._unload_adapter(slot, adapter)
            if slot.retired and slot.in_use == 0 and slot.engine is not None:
                async with self._budget_lock:
                    await self._unload_slot(slot)

    async def load(self, name: str) -> None:
        """Load `name` now (no-op when loaded), e.g. to warm a model up before traffic arrives."""
        slot, spec = self._slot_of(name)
        slot.in_use += 1  # protects it from eviction while loading, as a user would
        try:
            await self._ensure_loaded(slot)
            if spec.base is not None:
                await self._ensure_adapter(slot, spec)
        finally:
            slot.in_use -= 1
            slot.last_used = self._clock()

    async def unload(self, name: str) -> None:
        """Unload `name` now; an EngineError (retryable) if requests are using it."""
        slot, spec = self._slot_of(name)
        if spec.base is not None:
            adapter = slot.adapters.get(spec.id)
            if adapter is not None and adapter.in_use:
                raise EngineError(f"model {spec.id} is in use by {adapter.in_use} request(s); unload it once they end",
                                  retryable=True)
            if adapter is not None:
                await self._unload_adapter(slot, adapter)
            return
        if slot.loading is not None:
            with contextlib.suppress(CynodeError):
                await asyncio.shield(slot.loading)
        if slot.in_use:
            raise EngineError(f"model {slot.spec.id} is in use by {slot.in_use} request(s); unload it once they end",
                              retryable=True)
        if slot.engine is not None:
            async with self._budget_lock:
                await self._unload_slot(slot)

    # status ------------------------------------------------------------------------------------

    def capacity(self) -> int:
        """Requests this worker generates at once for one model: the largest admission limit of the
        loaded models (before any is loaded, the provisional one). Published in gossip."""
        limits = [s.gate.limit for s in self._all_slots() if s.engine is not None]
        if limits:
            return max(limits)
        # Nothing loaded yet: what the models that can tell from their files will admit.
        known = [limit for spec in self._registry.specs if (limit := self._estimated_limit(spec)) is not None]
        return max(known, default=self._per_model or DEFAULT_CONCURRENCY)

    def loaded(self) -> list[str]:
        """Ids of the models loaded now (a model retiring after a registry change included)."""
        return sorted({*(s.spec.id for s in self._all_slots() if s.engine is not None),
                       *(a.spec.id for s in self._all_slots() if s.engine is not None
                         for a in s.adapters.values() if a.loaded)})

    def status(self) -> list[dict]:
        """One entry per registry model (and per retiring one): what gossip and /metrics report."""
        out = []
        for spec in self._registry.specs:
            if spec.base is not None:
                out.append(self._describe_adapter(spec))
                continue
            slot = self._slots.get(spec.id)
            out.append(self._describe(spec, slot))
        out.extend({**self._describe(s.spec, s), "retiring": True} for s in self._retiring)
        return out

    def _describe(self, spec: ModelSpec, slot: ModelSlot | None) -> dict:
        # The base's own users: its adapters' users are reported under the adapters' ids.
        in_use = slot.in_use - sum(a.in_use for a in slot.adapters.values()) if slot else 0
        return {"id": spec.id, "loaded": bool(slot and slot.engine), "loading": bool(slot and slot.loading),
                "in_use": in_use, "waiting": slot.waiting if slot else 0,
                "last_used": slot.last_used if slot and slot.last_used else None,
                "footprint": slot.footprint if slot and (slot.engine or slot.loading) else None,
                "kv_budget": slot.kv_share if slot and slot.engine and slot.kv_taker else None,
                "retiring": False}

    # registry changes and idle models ------------------------------------------------------------

    def update_registry(self, registry: ModelRegistry) -> None:
        """Serve `registry` from now on (SIGHUP). Models it drops or changes are unloaded once idle."""
        self._registry = registry
        for model_id, slot in list(self._slots.items()):
            new = registry.resolve(model_id)
            if new is not None and new.id == model_id and same_load(slot, new):
                slot.spec = new  # only tags, aliases or sampling defaults changed: keep the engine
                continue
            del self._slots[model_id]
            slot.retired = True
            if slot.engine is not None or slot.loading is not None:
                self._retiring.append(slot)
            log.info("model %s %s the registry; unloading it once idle", model_id,
                     "changed in" if new is not None else "left")
        for slot in self._slots.values():
            for adapter in slot.adapters.values():
                new = registry.resolve(adapter.spec.id)
                adapter.retired = new is None or new.base != slot.spec.id

    async def reap_idle(self) -> list[str]:
        """Unload models idle for longer than `idle_unload`, and idle retiring ones; return their ids."""
        now = self._clock()
        reaped = []
        async with self._budget_lock:
            for slot in list(self._all_slots()):
                for adapter in [a for a in slot.adapters.values() if a.retired and not a.in_use and not a.loading]:
                    await self._unload_adapter(slot, adapter)
                    reaped.append(adapter.spec.id)
                if slot.engine is None or slot.in_use or slot.loading is not None:
                    continue
                expired = self._idle_unload is not None and now - slot.last_used >= self._idle_unload
                if slot.retired or expired:
                    await self._unload_slot(slot)
                    reaped.append(slot.spec.id)
        if reaped:
            log.info("unloaded idle model(s): %s", ", ".join(reaped))
        return reaped

    async def close(self) -> None:
        """Unload everything, in use or not (shutdown); later `use` calls fail. Safe to call twice."""
        self._closed = True
        for slot in list(self._all_slots()):
            if slot.loading is not None:
                slot.loading.cancel()
                with contextlib.suppress(BaseException):
                    await slot.loading
            if slot.engine is not None:
                await self._unload_slot(slot)
        self._retiring.clear()

    # internals ---------------------------------------------------------------------------------

    def _all_slots(self) -> list[ModelSlot]:
        return [*self._slots.values(), *self._retiring]

    def _slot_of(self, name: str) -> tuple[ModelSlot, ModelSpec]:
        """The slot serving `name` (for an adapter, its base model's) and `name`'s own spec."""
        if self._closed:
            raise EngineError("the memory manager is closed (the worker is shutting down)", retryable=True)
        spec = self._registry.resolve(name)
        base = self._registry.resolve(spec.base) if spec is not None and spec.base is not None else spec
        if spec is None or base is None or base.base is not None:
            known = ", ".join(s.id for s in self._registry.specs)
            raise RequestError(f"model {name!r} does not exist on this worker (it serves: {known})",
                               status=404, code="model_not_found", param="model")
        slot = self._slots.get(base.id)
        if slot is None:
            slot = self._slots[base.id] = ModelSlot(base, AdmissionGate(self._provisional_limit(base)))
        return slot, spec

    async def _ensure_loaded(self, slot: ModelSlot) -> InferenceEngine:
        if slot.engine is not None:
            return slot.engine
        if slot.loading is None:
            slot.loading = asyncio.create_task(self._load(slot), name=f"load-{slot.spec.id}")
            slot.loading.add_done_callback(lambda task, slot=slot: self._load_done(slot, task))
        task = slot.loading
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The load itself was cancelled (close()), not this waiter: say so rather than look cancelled.
            if task.cancelled() and not asyncio.current_task().cancelling():
                raise EngineError(f"model {slot.spec.id}: loading was cancelled (the worker is shutting down)",
                                  retryable=True) from None
            raise

    def _load_done(self, slot: ModelSlot, task: asyncio.Task) -> None:
        slot.loading = None
        if not task.cancelled() and task.exception() is not None:  # retrieved here: waiters may all be gone
            log.warning("loading model %s failed: %s", slot.spec.id, task.exception())

    async def _load(self, slot: ModelSlot) -> InferenceEngine:
        spec = slot.spec
        try:
            need = int(await asyncio.to_thread(self._footprint, spec))
            fingerprint = await asyncio.to_thread(source_fingerprint, spec)
        except OSError as exc:
            raise EngineError(f"model {spec.id}: cannot read its files: {exc}") from exc
        async with self._budget_lock:
            await self._make_room(slot, need)
            slot.footprint = need  # reserved: later loads count it
            self._split_kv()  # the loaded models' KV shares make room for this one's at once
        engine = None
        try:
            log.info("loading model %s (about %s)", spec.id, size_text(need))
            engine = await asyncio.to_thread(self._factory, spec)
            # Sized at start from its share (the split counts this model already), resized by _split_kv.
            slot.kv_taker = engine.set_kv_budget(self._kv_share())
            await engine.start()
        except BaseException as exc:
            slot.footprint, slot.kv_taker = 0, False
            self._split_kv()
            if engine is not None:
                with contextlib.suppress(Exception):
                    await engine.close()
            if isinstance(exc, CynodeError) or not isinstance(exc, Exception):
                raise
            raise EngineError(f"model {spec.id}: loading failed: {exc}") from exc
        slot.engine, slot.fingerprint, slot.last_used = engine, fingerprint, self._clock()
        if not slot.kv_taker:
            slot.footprint += engine.own_kv_bytes()  # a cache it sized itself still takes the budget's bytes
        self._split_kv()
        self._admit_capacity(slot)
        log.info("model %s admits %d request(s) at once (engine capacity %s, ceiling %s, KV cache %s)", spec.id,
                 slot.gate.limit, engine.capacity() or "unknown", self._per_model or "none",
                 size_text(slot.kv_share) if slot.kv_taker else "its own")
        return engine

    async def _make_room(self, slot: ModelSlot, need: int, what: str | None = None) -> None:
        """Evict least recently used idle models until `need` more bytes fit next to what `slot`
        already holds (its adapters grow it). Holds the budget lock."""
        others = [s for s in self._all_slots() if s is not slot and s.footprint]
        free = self.budget_bytes - sum(s.footprint for s in others) - slot.footprint
        if need <= free:
            return
        idle = sorted((s for s in others if s.engine is not None and s.in_use == 0 and s.loading is None),
                      key=lambda s: (not s.retired, s.last_used))  # retiring ones go first
        victims = []
        for victim in idle:
            if need <= free:
                break
            victims.append(victim)
            free += victim.footprint
        if need > free:
            busy = [s for s in others if s not in victims]
            held = ", ".join(f"{s.spec.id} ({size_text(s.footprint)}, "
                             f"{'loading' if s.loading else f'{s.in_use} request(s)'})" for s in busy) or "none"
            what = what or f"model {slot.spec.id}"
            own = f", {slot.spec.id} holds {size_text(slot.footprint)}" if slot.footprint else ""
            raise EngineError(f"not enough memory to load {what}: need {size_text(need)}, budget "
                              f"{size_text(self.budget_bytes)}{own}, in use by busy models: {held}",
                              retryable=need + slot.footprint <= self.budget_bytes)
        for victim in victims:
            log.info("evicting idle model %s (last used %.0f s ago) to load %s", victim.spec.id,
                     self._clock() - victim.last_used, slot.spec.id)
            await self._unload_slot(victim)

    async def _unload_slot(self, slot: ModelSlot) -> None:
        engine, slot.engine = slot.engine, None  # new users start a fresh load rather than use a closing engine
        slot.adapters.clear()  # they go with the engine
        try:
            if engine is not None:
                await engine.close()
        finally:
            slot.footprint, slot.kv_taker, slot.kv_share = 0, False, 0
            if slot.retired and slot in self._retiring:
                self._retiring.remove(slot)
            self._split_kv()  # what it held goes to the models still loaded

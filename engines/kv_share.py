"""The KV half of the MemoryManager's rules: each model's share of the budget and its admission limit.

`KVSharing` is the part of `MemoryManager` (memory_manager.py, whose docstring has the rules) that
splits what the loaded models' footprints leave of the budget equally between the engines that size
their KV cache by it, and sets each model's admission limit from its engine's capacity at that share
(or, before the load, from what its folder's config.json gives). It relies on the manager's
`budget_bytes`, `used_bytes`, `_all_slots`, `_per_model`, `_footprint` and `_estimates`, and is not
used on its own.
"""

from __future__ import annotations

import logging

from cynode.engines.admission import DEFAULT_CONCURRENCY
from cynode.engines.footprint import DTYPE_BYTES
from cynode.engines.kv_memory import folder_capacity
from cynode.engines.model_slots import ModelSlot, size_text
from cynode.engines.registry import ModelSpec

log = logging.getLogger("cynode.engines.memory_manager")  # one logger for the manager's messages


class KVSharing:
    """KV shares and admission limits of the loaded models; a base class of MemoryManager."""

    def _admit_capacity(self, slot: ModelSlot) -> None:
        """The slot's admission limit: its engine's capacity under the ceiling."""
        capacity = slot.engine.capacity() if slot.engine is not None else None
        slot.gate.set_limit(min(capacity, self._per_model or capacity) if capacity
                            else self._per_model or DEFAULT_CONCURRENCY)

    def _provisional_limit(self, spec: ModelSpec) -> int:
        """The admission limit of a model not loaded yet: the estimate, or the ceiling or default."""
        return self._estimated_limit(spec) or self._per_model or DEFAULT_CONCURRENCY

    def _estimated_limit(self, spec: ModelSpec) -> int | None:
        """What `spec` will admit once loaded, as far as its files say before the load: a
        transformers model folder at the KV share it would get now; None for anything else."""
        if spec.engine != "transformers" or spec.source_kind != "folder" or spec.path is None:
            return None
        if spec not in self._estimates:
            try:
                self._estimates[spec] = int(self._footprint(spec))
            except OSError:
                return None
        pool = self.budget_bytes - self.used_bytes - self._estimates[spec]
        share = max(1, pool // (len(self._kv_sharers()) + 1))
        return folder_capacity(spec.path, DTYPE_BYTES.get(spec.dtype, 4), share, ceiling=self._per_model)

    def _kv_sharers(self) -> list[ModelSlot]:
        """Loaded models whose engine takes a KV share, and loading ones that will (a transformers engine)."""
        return [s for s in self._all_slots() if s.footprint and (
            s.kv_taker if s.engine is not None else s.spec.engine == "transformers")]

    def _kv_share(self) -> int:
        """What the weights leave of the budget, split equally between the models that share it.

        Every loaded model's weights (and loading one's reservation) are counted once, in its
        footprint; the rest is the KV memory, and each engine that sizes its cache by the budget gets
        an equal part, so two models never both count on the same bytes.
        """
        pool = self.budget_bytes - sum(s.footprint for s in self._all_slots())
        return max(1, pool // max(1, len(self._kv_sharers())))

    def _split_kv(self) -> None:
        """Give every loaded sharer its share now (after a load, an unload, or a reservation)."""
        share = self._kv_share()
        for slot in self._kv_sharers():
            if slot.engine is None or slot.kv_share == share:
                continue
            slot.kv_share = share
            slot.engine.set_kv_budget(share)
            self._admit_capacity(slot)
            log.info("model %s: KV cache %s, admits %d at once", slot.spec.id, size_text(share), slot.gate.limit)

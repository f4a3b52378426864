"""What one micro-batch computes, per training method: supervised LoRA or DPO.

The trainer owns the loop (order, accumulation, clipping, stepping, events); a method only turns a
micro-batch into a loss and its figures. DPO's reference model is the base model itself with the
adapter switched off (`disable_adapter`), so no second copy of the weights is held.
"""

from __future__ import annotations

from typing import Any

from .batch import collate, collate_pairs
from .losses import count_loss_tokens, dpo_terms, sequence_logps, sft_loss_sum


def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k != "labels"}


class Supervised:
    """Next-token cross-entropy averaged over every trained token of the optimizer step."""

    name = "supervised"

    def __init__(self, pad_id: int, device: str) -> None:
        self.pad_id, self.device = pad_id, device

    def collate(self, items: list[Any]) -> dict[str, Any]:
        return collate(items, self.pad_id, self.device)

    def denominator(self, batches: list[dict[str, Any]]) -> float:
        return float(max(1, sum(count_loss_tokens(b["labels"]) for b in batches)))

    def micro_step(self, model: Any, batch: dict[str, Any], denominator: float) -> tuple[Any, dict[str, float]]:
        logits = model(**_model_inputs(batch)).logits
        return sft_loss_sum(logits, batch["labels"]) / denominator, {}

    def evaluate(self, model: Any, items: list[Any], batch_size: int) -> tuple[float, dict[str, float]]:
        import torch

        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(items), batch_size):
                batch = self.collate(items[i: i + batch_size])
                logits = model(**_model_inputs(batch)).logits
                total += float(sft_loss_sum(logits, batch["labels"]))
                count += count_loss_tokens(batch["labels"])
        return total / max(1, count), {}


class Dpo:
    """Direct preference optimisation, sigmoid loss, averaged over the pairs of the step."""

    name = "dpo"

    def __init__(self, pad_id: int, device: str, beta: float) -> None:
        self.pad_id, self.device, self.beta = pad_id, device, beta

    def collate(self, items: list[Any]) -> dict[str, Any]:
        return collate_pairs(items, self.pad_id, self.device)

    def denominator(self, batches: list[dict[str, Any]]) -> float:
        return float(sum(b["labels"].shape[0] // 2 for b in batches))

    def _terms(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        inputs = _model_inputs(batch)
        with torch.no_grad(), model.disable_adapter():
            reference = sequence_logps(model(**inputs).logits, batch["labels"])
        policy = sequence_logps(model(**inputs).logits, batch["labels"])
        return dpo_terms(policy, reference, self.beta)

    def micro_step(self, model: Any, batch: dict[str, Any], denominator: float) -> tuple[Any, dict[str, float]]:
        terms = self._terms(model, batch)
        return terms["losses"].sum() / denominator, _sums(terms)

    def evaluate(self, model: Any, items: list[Any], batch_size: int) -> tuple[float, dict[str, float]]:
        import torch

        sums: dict[str, float] = {}
        loss, pairs = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(items), batch_size):
                terms = self._terms(model, self.collate(items[i: i + batch_size]))
                loss += float(terms["losses"].sum())
                pairs += int(terms["losses"].shape[0])
                for k, v in _sums(terms).items():
                    sums[k] = sums.get(k, 0.0) + v
        return loss / max(1, pairs), {k: v / max(1, pairs) for k, v in sums.items()}


def _sums(terms: dict[str, Any]) -> dict[str, float]:
    """Per-pair figures summed over the micro-batch (the trainer divides by the pairs of the step)."""
    return {
        "rewards_chosen": float(terms["chosen_rewards"].sum()),
        "rewards_rejected": float(terms["rejected_rewards"].sum()),
        "rewards_margin": float(terms["margins"].sum()),
        "rewards_accuracy": float((terms["margins"] > 0).float().sum()),
    }

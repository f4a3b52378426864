"""Micro-batches: data order per epoch and padding into tensors."""

from __future__ import annotations

import random
from typing import Any

from ..data.sample import IGNORE_INDEX, TokenizedPair, TokenizedSample


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """Sample order of one epoch: a shuffle that depends only on (seed, epoch), so a resumed job
    walks the same order as an unbroken one."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def micro_batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def collate(items: list[TokenizedSample], pad_id: int, device: str) -> dict[str, Any]:
    """Right-padded tensors. Packed sequences go without an attention mask and with position ids
    that restart per sample (transformers then masks attention across samples); padding forms a
    segment of its own."""
    import torch

    width = max(len(it.input_ids) for it in items)
    packed = any(it.position_ids is not None for it in items)
    ids, labels, mask, positions = [], [], [], []
    for it in items:
        pad = width - len(it.input_ids)
        ids.append(it.input_ids + [pad_id] * pad)
        labels.append(it.labels + [IGNORE_INDEX] * pad)
        mask.append([1] * len(it.input_ids) + [0] * pad)
        own = it.position_ids if it.position_ids is not None else list(range(len(it.input_ids)))
        positions.append(own + list(range(pad)))
    batch = {
        "input_ids": torch.tensor(ids, dtype=torch.long, device=device),
        "labels": torch.tensor(labels, dtype=torch.long, device=device),
    }
    if packed:
        batch["position_ids"] = torch.tensor(positions, dtype=torch.long, device=device)
    else:
        batch["attention_mask"] = torch.tensor(mask, dtype=torch.long, device=device)
    return batch


def collate_pairs(pairs: list[TokenizedPair], pad_id: int, device: str) -> dict[str, Any]:
    """Chosen sequences first, then rejected ones, in one padded batch (one forward pass for both)."""
    return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, device)


def input_tokens(items: list[Any]) -> int:
    """Tokens a micro-batch trains on, padding excluded."""
    total = 0
    for it in items:
        if isinstance(it, TokenizedPair):
            total += len(it.chosen.input_ids) + len(it.rejected.input_ids)
        else:
            total += len(it.input_ids)
    return total

"""Packing: several short samples in one sequence, so a batch holds fewer padding tokens.

Packed sequences carry `position_ids` that restart at 0 for each sample. With no attention mask,
transformers reads those restarts as sample boundaries and masks attention across them (its
`find_packed_sequence_indices`), so packing changes speed, not what each sample sees.
First-fit decreasing keeps the packing deterministic for a given dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .sample import TokenizedSample


@dataclass
class _Bin:
    free: int
    items: list[TokenizedSample] = field(default_factory=list)


def pack(samples: list[TokenizedSample], max_len: int) -> list[TokenizedSample]:
    """Pack samples (each at most max_len long) into sequences of at most max_len tokens."""
    bins: list[_Bin] = []
    for sample in sorted(samples, key=lambda s: len(s.input_ids), reverse=True):
        size = len(sample.input_ids)
        target = next((b for b in bins if b.free >= size), None)
        if target is None:
            target = _Bin(max_len)
            bins.append(target)
        target.items.append(sample)
        target.free -= size
    packed = []
    for b in bins:
        ids, labels, positions = [], [], []
        for item in b.items:
            ids += item.input_ids
            labels += item.labels
            positions += list(range(len(item.input_ids)))
        packed.append(TokenizedSample(ids, labels, truncated=any(i.truncated for i in b.items),
                                      position_ids=positions))
    return packed

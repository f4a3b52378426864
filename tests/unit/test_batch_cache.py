"""The batcher's K/V cache (batch_cache.py) on its own: rows and columns grow only as far as needed,
and every row keeps exactly its own K/V through a regrowth."""

from __future__ import annotations

import torch

from cynode.engines.batch_cache import RaggedKVCache

LAYERS, HEADS, DIM = 2, 3, 4


def prefilled(length: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, HEADS, length, DIM, generator=gen), torch.randn(1, HEADS, length, DIM, generator=gen))
            for _ in range(LAYERS)]


def row_kv(cache: RaggedKVCache, row: int, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    hi, n = cache._hi, cache.lengths[row]
    return cache._keys[layer][row, :, hi - n:hi], cache._values[layer][row, :, hi - n:hi]


def test_a_long_prompt_joining_a_batch_with_free_rows_grows_the_columns_not_the_rows():
    cache = RaggedKVCache(LAYERS, max_rows=50, device=torch.device("cpu"))
    shorts = [prefilled(10 + i, i) for i in range(3)]
    for kv in shorts:
        cache.add(kv)
    rows_before = cache._keys[0].shape[0]
    assert rows_before == 4  # 1, 2, 4: doubled as rows ran out
    cache.add(prefilled(2000, 99))
    assert cache._keys[0].shape[0] == rows_before, "the rows did not run out, so they must not grow"
    assert cache._keys[0].shape[2] > 2000
    for row, kv in enumerate(shorts):  # the running rows kept their own K/V
        keys, values = row_kv(cache, row)
        assert torch.equal(keys, kv[0][0][0]) and torch.equal(values, kv[0][1][0])
    mask, positions = cache.step_inputs()
    assert mask.shape == (4, 1, 1, 2001) and positions[:, 0].tolist() == [10, 11, 12, 2000]
    hi = cache._hi
    window = cache._keys[1][:4, :, hi - 2000:hi]
    assert torch.isfinite(window).all()
    assert not window[0, :, :2000 - 10].any(), "a short row's padding in the window is zeros"


def test_rows_double_when_they_run_out_up_to_max_rows():
    cache = RaggedKVCache(LAYERS, max_rows=6, device=torch.device("cpu"))
    capacities = []
    for i in range(6):
        cache.add(prefilled(5, i))
        capacities.append(cache._keys[0].shape[0])
    assert capacities == [1, 2, 4, 4, 6, 6]

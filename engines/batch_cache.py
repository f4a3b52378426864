"""The K/V cache of a running batch: one buffer per layer, one row per sequence, left-padded.

Row `b` holds its sequence's `lengths[b]` cached tokens in the columns just left of the shared write
column `hi`; the columns further left are padding. A decode step writes every row's new K/V at column
`hi` and attends over `[hi - width, hi]`, where `width` is the longest row, with a mask that shows
each row only its own tokens. Keys carry their rotary position already (the model applies it before
caching), so where a token sits in the buffer does not change what it means: a row's attention sees
exactly the keys and values it would see alone, and greedy output in a batch equals the output alone.

Rows join and leave between steps at the cost of one row, not of the whole batch: `add` copies a
prefilled sequence into the next free row, `remove` moves the last row into the freed one (the
scheduler mirrors that move in its own list). Buffers grow by doubling and are copied only then
(`_rebase`), so a decode step appends in place instead of concatenating the whole cache as
`DynamicCache` does. Buffers start zeroed and only ever hold real K/V, so the padding a mask hides is
always finite (a NaN there would survive multiplication by a zero attention weight).

Only models whose attention goes through `Cache.update` with full (not sliding-window) attention are
served exactly; the mask is handed to the model ready-made, so a sliding window would be ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

_MIN_COLUMNS = 256  # first allocation and least growth, in tokens


class _RaggedLayer(CacheLayerMixin):
    """What the model sees of one layer: `update` appends the step's K/V at the shared column."""

    is_sliding = False

    def __init__(self, owner: RaggedKVCache, index: int) -> None:
        super().__init__()
        self.owner, self.index = owner, index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # the owner allocates the buffers when the first row joins

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return self.owner._write(self.index, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.width + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.width

    def get_max_length(self) -> int:
        return -1


class RaggedKVCache(Cache):
    """Per-layer K/V for up to `max_rows` sequences of different lengths, decoded in one forward."""

    def __init__(self, num_layers: int, max_rows: int, device: torch.device, max_tokens: int | None = None) -> None:
        super().__init__(layers=[_RaggedLayer(self, i) for i in range(num_layers)])
        self.max_rows = max_rows
        self.max_tokens = max_tokens  # growth slack stops at rows × columns = this (the batcher's KV cap)
        self.device = device
        self.lengths: list[int] = []  # cached tokens per row
        self._keys: list[torch.Tensor] = []  # per layer: [row capacity, heads, columns, head dim]
        self._values: list[torch.Tensor] = []
        self._hi = 0  # the column the next decode step writes

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        """Columns a row may need to look at: the longest row's cached length."""
        return max(self.lengths, default=0)

    def add(self, kv: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Copy one prefilled sequence (per layer K and V of shape [1, heads, length, head dim]) into a new row."""
        if self.rows >= self.max_rows:
            raise RuntimeError(f"the batch is full ({self.max_rows} rows)")
        if len(kv) != len(self.layers):
            raise ValueError(f"expected K/V for {len(self.layers)} layers, got {len(kv)}")
        length = kv[0][0].shape[-2]
        if not self._keys:
            self._allocate(kv, rows=1, columns=self._columns(1, length, max(_MIN_COLUMNS, 2 * length)))
            self._hi = length
        elif self.rows >= self._keys[0].shape[0] or length > self._hi:
            self._rebase(rows=self.rows + 1, hi=max(length, self.width))
        row, hi = self.rows, self._hi
        for layer, (key, value) in enumerate(kv):
            self._keys[layer][row, :, hi - length:hi] = key[0]
            self._values[layer][row, :, hi - length:hi] = value[0]
        self.lengths.append(length)
        return row

    def remove(self, row: int) -> None:
        """Free `row`; the last row moves into it (the caller moves its own bookkeeping the same way)."""
        last = self.rows - 1
        if row != last:
            lo, hi = self._hi - self.width, self._hi
            for buffer in (*self._keys, *self._values):
                buffer[row, :, lo:hi] = buffer[last, :, lo:hi]
            self.lengths[row] = self.lengths[last]
        self.lengths.pop()
        if not self.lengths:  # an idle engine should not sit on a long conversation's cache
            self._keys, self._values, self._hi = [], [], 0

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask [rows, 1, 1, width + 1] and position ids [rows, 1] for one decode step."""
        if not self.lengths:
            raise RuntimeError("no rows to decode")
        if self._hi >= self._keys[0].shape[2]:
            self._rebase(rows=self.rows, hi=self.width)
        lengths = torch.tensor(self.lengths, dtype=torch.long, device=self.device)
        columns = torch.arange(self.width + 1, device=self.device)
        # Row b sees its last lengths[b] cached columns and the new token: the right-most lengths[b] + 1.
        mask = columns[None, :] >= (self.width - lengths)[:, None]
        return mask[:, None, None, :], lengths[:, None]

    def advance(self) -> None:
        """Every row gained the token the step just wrote."""
        self._hi += 1
        self.lengths = [n + 1 for n in self.lengths]

    def _write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if key.shape[0] != self.rows or key.shape[-2] != 1:
            raise RuntimeError(f"a decode step must bring one token per row ({self.rows} rows), "
                               f"got K/V of shape {tuple(key.shape)}")
        rows, lo, hi = self.rows, self._hi - self.width, self._hi
        self._keys[layer][:rows, :, hi:hi + 1] = key
        self._values[layer][:rows, :, hi:hi + 1] = value
        return self._keys[layer][:rows, :, lo:hi + 1], self._values[layer][:rows, :, lo:hi + 1]

    def _columns(self, rows: int, hi: int, wanted: int) -> int:
        """`wanted` columns, less the growth slack that would take rows × columns past max_tokens."""
        if self.max_tokens is None:
            return wanted
        return max(hi + 1, min(wanted, self.max_tokens // max(rows, 1)))

    def _allocate(self, like: Sequence[tuple[torch.Tensor, torch.Tensor]], rows: int, columns: int) -> None:
        def empty(t: torch.Tensor) -> torch.Tensor:
            return torch.zeros((rows, t.shape[1], columns, t.shape[3]), dtype=t.dtype, device=self.device)

        self._keys = [empty(k) for k, _ in like]
        self._values = [empty(v) for _, v in like]

    def _rebase(self, rows: int, hi: int) -> None:
        """Copy the live columns into bigger buffers whose write column is `hi`, with room to grow."""
        capacity = self._keys[0].shape[0]
        # Rows double only when they run out: a long prompt joining must not also double the rows.
        row_capacity = capacity if rows <= capacity else min(self.max_rows, max(rows, 2 * capacity))
        columns = self._columns(row_capacity, hi, hi + max(_MIN_COLUMNS, hi))
        width, old_hi = self.width, self._hi
        old_keys, old_values = self._keys, self._values
        self._allocate([(k, v) for k, v in zip(old_keys, old_values)], row_capacity, columns)
        live = slice(old_hi - width, old_hi)
        for new, old in zip((*self._keys, *self._values), (*old_keys, *old_values)):
            new[:self.rows, :, hi - width:hi] = old[:self.rows, :, live]
        self._hi = hi

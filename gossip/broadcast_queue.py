"""State changes waiting to be piggybacked, each sent a limited number of times (memberlist's
`TransmitLimitedQueue`).

Every broadcast is about one member (its name is the key): a newer message about a member replaces
the older one still queued, so a suspect followed by a refuting alive never sends the stale suspect
again. Messages sent fewer times go first, and among those the newest first, which is what makes
dissemination fast: a fresh change rides on the very next packets out. A message is dropped after
`retransmit_mult * ceil(log10(n + 1))` transmissions, enough to reach every member with high
probability (SWIM's infection-style dissemination).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable


# No broadcast is smaller than this (a suspect or dead message with one-letter names).
_SMALLEST = 8
# After this many queued messages too big for the space left, the packet is full enough.
_MAX_MISFITS = 16


class _Item:
    __slots__ = ("key", "message", "transmits", "seq", "on_done")

    def __init__(self, key: str, message: bytes, seq: int, on_done: Callable[[], None] | None) -> None:
        self.key = key
        self.message = message
        self.transmits = 0
        self.seq = seq
        self.on_done = on_done


class BroadcastQueue:
    """Not thread-safe; owned by one protocol core."""

    __slots__ = ("_limit_for", "_max_queued", "_by_key", "_tiers", "_seq")

    def __init__(self, transmit_limit: Callable[[], int], max_queued: int = 4096) -> None:
        self._limit_for = transmit_limit
        self._max_queued = max_queued
        self._by_key: dict[str, _Item] = {}
        # transmits -> {seq: item}; dicts keep insertion (= seq) order, so reversed() is newest first.
        self._tiers: dict[int, dict[int, _Item]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._by_key)

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def queue(self, key: str, message: bytes, on_done: Callable[[], None] | None = None) -> None:
        """Queue `message` about member `key`, replacing any older message about it."""
        old = self._by_key.pop(key, None)
        if old is not None:
            tier = self._tiers[old.transmits]
            del tier[old.seq]
            if not tier:
                del self._tiers[old.transmits]
            if old.on_done is not None:
                old.on_done()
        item = _Item(key, message, next(self._seq), on_done)
        self._by_key[key] = item
        self._tiers.setdefault(0, {})[item.seq] = item
        if len(self._by_key) > self._max_queued:
            self.prune(self._max_queued)

    def get(self, overhead: int, limit: int) -> list[bytes]:
        """Messages to piggyback into `limit` bytes, each costing `overhead` extra; counts them sent."""
        if not self._by_key:
            return []
        transmit_limit = self._limit_for()
        chosen: list[bytes] = []
        moved: list[_Item] = []
        used = 0
        tiers = self._tiers
        misfits = 0
        for transmits in sorted(tiers):
            tier = tiers[transmits]
            for seq in reversed(tier):
                free = limit - used - overhead
                if free < _SMALLEST or misfits >= _MAX_MISFITS:
                    break
                item = tier[seq]
                size = len(item.message)
                if size > free:
                    misfits += 1  # a long queue of big messages: stop looking soon
                    continue
                used += overhead + size
                chosen.append(item.message)
                moved.append(item)
            if limit - used - overhead < _SMALLEST or misfits >= _MAX_MISFITS:
                break
        # Oldest first, so each tier's dict stays in queueing order (reversed() = newest first).
        for item in reversed(moved):
            tier = tiers[item.transmits]
            del tier[item.seq]
            if not tier:
                del tiers[item.transmits]
            item.transmits += 1
            if item.transmits >= transmit_limit:
                del self._by_key[item.key]
                if item.on_done is not None:
                    item.on_done()
            else:
                tiers.setdefault(item.transmits, {})[item.seq] = item
        return chosen

    def transmits(self, key: str) -> int | None:
        """How often the queued message about `key` has been sent; None when none is queued."""
        item = self._by_key.get(key)
        return None if item is None else item.transmits

    def prune(self, keep: int) -> None:
        """Drop the most-sent, oldest messages until at most `keep` remain."""
        while len(self._by_key) > keep:
            most = max(self._tiers)
            tier = self._tiers[most]
            seq = next(iter(tier))
            item = tier.pop(seq)
            if not tier:
                del self._tiers[most]
            del self._by_key[item.key]
            if item.on_done is not None:
                item.on_done()

    def clear(self) -> None:
        self._by_key.clear()
        self._tiers.clear()

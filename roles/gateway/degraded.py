"""Degraded mode: no coordinator (Redis down, or no leader), and the gateway keeps serving.

A probe reads the leader record from Redis once a second. When it has found no leader (or no
Redis) for `[gateway] degraded_after`, new requests skip the coordinator: the gateway picks a worker
from gossip metadata itself (a live member with the worker role that lists the model, the one with
the most free slots) and streams from it. Nothing is cached or queued, no lease is held, and the
answer carries `X-Cynode-Degraded: true`. The first probe that finds a leader again ends it.

Requests already waiting inside Admit when the coordinator goes away are not moved: their task may
exist in Redis already, and the leader that comes back serves it exactly once. Degraded requests
carry the last leader epoch the gateway knew, so a worker that has seen a newer leader refuses
them (and another is tried).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from cynode.errors import CynodeError
from cynode.leader_record import read_leader
from cynode.redis_conn import RedisConnection

log = logging.getLogger(__name__)

__all__ = ["DEGRADED_HEADER", "Degraded"]

DEGRADED_HEADER = "X-Cynode-Degraded"
PROBE_S = 1.0


class Degraded:
    def __init__(self, redis: RedisConnection, members: Callable[[], list], *, after: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._members = members
        self._after = after
        self._clock = clock
        self._missing_since: float | None = None
        self.active = False
        self.epoch = 0  # the newest leader epoch seen

    def saw_epoch(self, epoch: int) -> None:
        self.epoch = max(self.epoch, epoch)

    async def probe(self) -> None:
        """One look at the leader record; switches the mode when it has to."""
        try:
            leader = await asyncio.wait_for(read_leader(self._redis), timeout=PROBE_S * 2)
        except (CynodeError, TimeoutError, OSError):
            leader = None
        now = self._clock()
        if leader is not None:
            self.saw_epoch(leader.epoch)
            self._missing_since = None
            if self.active:
                self.active = False
                log.warning("coordinator leader %s is back (epoch %d): degraded mode ends", leader.id, leader.epoch)
            return
        if self._missing_since is None:
            self._missing_since = now
        if not self.active and now - self._missing_since >= self._after:
            self.active = True
            log.warning("no coordinator leader for %.0fs: degraded mode (straight to workers from gossip; "
                        "nothing cached or queued)", now - self._missing_since)

    async def run(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(PROBE_S)

    def pick(self, model: str, exclude: list[str]) -> tuple[str, str] | None:
        """(worker id, gRPC address) of a live worker for `model`, the one with the most free slots."""
        workers, fallback = [], []
        for member in self._members():
            meta = member.meta
            address = meta.get("addr", {}).get("worker")
            if str(member.state) != "alive" or not address or "worker" not in meta.get("roles", ()) \
                    or member.id in exclude:
                continue
            free = int(meta.get("capacity", 1) or 1) - int(meta.get("active", 0) or 0)
            entry = (free, random.random(), member.id, address)
            (workers if model in meta.get("models", ()) else fallback).append(entry)
        chosen = max(workers or fallback, default=None)
        return (chosen[2], chosen[3]) if chosen else None

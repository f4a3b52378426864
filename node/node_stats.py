"""Recent figures of this node and of the cluster, for the status page and gossip metadata.

Every node samples its own Prometheus registry every few seconds (tokens generated, time to first
token, queue depth) and keeps a quarter of an hour of samples, from which it derives the
last minute's tokens/s and TTFT. It publishes that summary in its gossip metadata (`stats`), so any
node can show the whole cluster without scraping anyone; and it records the cluster's totals, as its
gossip view shows them, on the same ticks, so the status page of any node draws the last minutes.

Sans-IO: `Sampler.sample(now)` and `ClusterHistory.record(now, ...)` take the time; the daemon's loop
(`node/operations.py`) drives them. Only the collectors named in `_WANTED` are read: collecting the
whole registry would also run gauges whose reading has side effects (the worker's CPU-percent
stand-in measures "since the last read", which belongs to the Prometheus scrape).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

KEEP_S = 900.0  # history kept: the status page's "last minutes"
WINDOW_S = 60.0  # the window behind "now" figures

TOKENS = "worker_tokens_generated_total"
TTFT = "worker_time_to_first_token_seconds"
_WANTED = (TOKENS, f"{TTFT}_bucket", f"{TTFT}_sum", f"{TTFT}_count", "worker_active_requests",
           "coordinator_queue_pending")


@dataclass(frozen=True)
class Reading:
    """Cumulative values of this node's metrics at one instant."""

    at: float
    tokens: float = 0.0
    ttft_sum: float = 0.0
    ttft_count: float = 0.0
    ttft_buckets: tuple[tuple[float, float], ...] = ()  # (upper bound, cumulative count), summed over models
    active: float = 0.0
    queue_pending: float | None = None  # only nodes that run a coordinator


def read_registry(registry: CollectorRegistry, now: float) -> Reading:
    values: dict[str, float] = {}
    buckets: dict[float, float] = {}
    seen: set[str] = set()
    for family in registry.restricted_registry(_WANTED).collect():
        for sample in family.samples:
            if sample.name not in _WANTED:
                continue
            seen.add(sample.name)
            if sample.name == f"{TTFT}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            else:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return Reading(
        at=now, tokens=values.get(TOKENS, 0.0), ttft_sum=values.get(f"{TTFT}_sum", 0.0),
        ttft_count=values.get(f"{TTFT}_count", 0.0), ttft_buckets=tuple(sorted(buckets.items())),
        active=values.get("worker_active_requests", 0.0),
        queue_pending=values["coordinator_queue_pending"] if "coordinator_queue_pending" in seen else None,
    )


@dataclass
class Sampler:
    """A ring of this node's readings and what they say about the last `WINDOW_S` seconds."""

    keep: float = KEEP_S
    readings: deque[Reading] = field(default_factory=deque)

    def add(self, reading: Reading) -> None:
        self.readings.append(reading)
        while self.readings and self.readings[0].at < reading.at - self.keep:
            self.readings.popleft()

    def summary(self, window: float = WINDOW_S) -> dict[str, Any]:
        """The compact `stats` gossip carries: short keys, because metadata is limited to 1 KiB.

        tps: tokens/s; ttft: mean seconds to first token; p95: its 95th percentile; n: first tokens
        in the window (weights for a cluster-wide mean); active; and for coordinators q (queue
        depth). Who leads is the coordinator's own `leader_epoch` in gossip, not repeated here."""
        if not self.readings:
            return {}
        last = self.readings[-1]
        first = _start_of_window(self.readings, last.at - window)
        span = last.at - first.at
        count = last.ttft_count - first.ttft_count
        stats: dict[str, Any] = {
            "tps": round((last.tokens - first.tokens) / span, 2) if span > 0 else 0.0,
            "ttft": round((last.ttft_sum - first.ttft_sum) / count, 4) if count > 0 else None,
            "p95": _quantile(0.95, _bucket_delta(first.ttft_buckets, last.ttft_buckets)),
            "n": int(count), "active": int(last.active),
        }
        if last.queue_pending is not None:
            stats.update(q=int(last.queue_pending))
        return stats


@dataclass(frozen=True)
class ClusterPoint:
    at: float
    tps: float
    ttft: float | None


@dataclass
class ClusterHistory:
    """The cluster's tokens/s and mean TTFT, as this node's gossip view showed them over time
    (`at` is wall-clock time: the page draws it against the browser's clock)."""

    keep: float = KEEP_S
    points: deque[ClusterPoint] = field(default_factory=deque)

    def record(self, now: float, member_stats: Iterable[Mapping[str, Any]]) -> ClusterPoint:
        point = ClusterPoint(now, *cluster_totals(member_stats))
        self.points.append(point)
        while self.points and self.points[0].at < now - self.keep:
            self.points.popleft()
        return point


def cluster_totals(member_stats: Iterable[Mapping[str, Any]]) -> tuple[float, float | None]:
    """(sum of tokens/s, mean TTFT weighted by each node's first-token count) over live members."""
    tps, weighted, count = 0.0, 0.0, 0
    for stats in member_stats:
        tps += float(stats.get("tps") or 0.0)
        n = int(stats.get("n") or 0)
        if n and stats.get("ttft") is not None:
            weighted += float(stats["ttft"]) * n
            count += n
    return round(tps, 2), (round(weighted / count, 4) if count else None)


def _start_of_window(readings: deque[Reading], start: float) -> Reading:
    """The newest reading at or before `start`, else the oldest one kept."""
    times = [r.at for r in readings]
    index = bisect_left(times, start)
    if index < len(readings) and times[index] == start:
        return readings[index]
    return readings[max(0, index - 1)]


def _bucket_delta(before: tuple[tuple[float, float], ...], after: tuple[tuple[float, float], ...]) -> list[tuple[float, float]]:
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (le, count) buckets: linear within a bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return round(lower_bound, 4)  # above the largest finite bucket: its bound is all we know
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return round(lower_bound + (bound - lower_bound) * share, 4)
        lower_bound, lower_count = bound, count
    return round(lower_bound, 4)

"""The cluster at a glance (`GET /v1/cluster/overview`, what the status page draws).

Built from what this node already knows, without asking anyone: the gossip members and their
metadata (roles, models loaded, each node's `stats` summary from `node_stats.py`), the leader as
Redis records it when this node has Redis (else as the leading coordinator's gossip says), and this
node's history of the cluster's throughput.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from cynode.gossip import Member

from . import __version__
from .http_routes import leader_among
from .leader_record import LeaderInfo
from .node_stats import ClusterHistory, cluster_totals
from .prometheus_sd import LIVE_STATES


def overview(*, node_id: str, cluster: str, members: Iterable[Member], leader: LeaderInfo | None,
             history: ClusterHistory, now: float | None = None) -> dict[str, Any]:
    members = sorted(members, key=lambda m: m.id)
    live = [m for m in members if str(m.state) in LIVE_STATES]
    leader_entry, queue = _leader(leader, live)
    tps, ttft = cluster_totals(_stats(m) for m in live)
    return {
        "node": node_id,
        "cluster": cluster,
        "version": __version__,
        "generated_at": time.time() if now is None else now,
        "leader": leader_entry,
        "queue": queue,
        "members": [_member(m) for m in members],
        "models": _models(live),
        "throughput": {"tokens_per_second": tps, "ttft_mean_s": ttft,
                       "ttft_p95_s": max((s["p95"] for s in map(_stats, live) if s.get("p95") is not None), default=None),
                       "window_s": 60},
        "history": [{"t": p.at, "tps": p.tps, "ttft": p.ttft} for p in history.points],
        # Training jobs join here once the training engine exists; the page shows the empty section.
        "training_jobs": [],
    }


def _stats(member: Member) -> dict[str, Any]:
    stats = member.meta.get("stats")
    return stats if isinstance(stats, dict) else {}


def _member(member: Member) -> dict[str, Any]:
    meta, stats = member.meta, _stats(member)
    return {
        "id": member.id,
        "address": member.address,
        "state": str(member.state),
        "roles": list(meta.get("roles", [])),
        "version": meta.get("version"),
        "addresses": dict(meta.get("addr") or {}),
        "backend": meta.get("backend"),
        "models": list(meta.get("models") or []),
        "loaded": list(meta.get("loaded") or []),
        "active": meta.get("active", stats.get("active")),
        "capacity": meta.get("capacity"),
        "tokens_per_second": stats.get("tps"),
        "ttft_mean_s": stats.get("ttft"),
        "ttft_p95_s": stats.get("p95"),
        "leader": bool(meta.get("leader_epoch")),
    }


def _leader(record: LeaderInfo | None, live: list[Member]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    announced = leader_among(live)
    queue = None
    reporter = next((m for m in live if announced is not None and m.id == announced.id), None)
    if reporter is not None and _stats(reporter).get("q") is not None:
        queue = {"pending": _stats(reporter)["q"], "reported_by": reporter.id}
    if record is not None:
        return {"id": record.id, "epoch": record.epoch, "address": record.address, "source": "redis"}, queue
    if announced is not None:
        return {"id": announced.id, "epoch": announced.epoch, "address": announced.address, "source": "gossip"}, queue
    return None, queue


def _models(live: list[Member]) -> list[dict[str, Any]]:
    models: dict[str, dict[str, list[str]]] = {}
    for member in live:
        meta = member.meta
        if "worker" not in meta.get("roles", []):
            continue
        for model in meta.get("models") or []:
            models.setdefault(model, {"loaded_on": [], "served_by": []})["served_by"].append(member.id)
        for model in meta.get("loaded") or []:
            models.setdefault(model, {"loaded_on": [], "served_by": []})["loaded_on"].append(member.id)
    return [{"id": model, **where} for model, where in sorted(models.items())]

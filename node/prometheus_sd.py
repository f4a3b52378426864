"""`GET /v1/cluster/prometheus-targets`: every live member's metrics address, for Prometheus.

The body is Prometheus' HTTP service-discovery format (`http_sd_configs`): a list of target groups,
one per member, so each target carries its own labels. Addresses come from what each member
publishes in gossip (`addr.metrics`, the `[metrics] listen` address as peers reach it); members that
gossip has declared dead or that left are dropped, suspect ones stay (they may be slow, not gone, and
Prometheus marks a target that does not answer as down by itself).

Any node answers for the whole cluster, so Prometheus can point at two or three nodes and find all
of them. Like every `/v1/cluster/*` endpoint it needs an API key with the admin scope; Prometheus
sends one with `authorization: {credentials_file: ...}` (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cynode.gossip import Member

LIVE_STATES = ("alive", "suspect")


def prometheus_targets(members: Iterable[Member], cluster: str) -> list[dict[str, Any]]:
    groups = []
    for member in sorted(members, key=lambda m: m.id):
        address = (member.meta.get("addr") or {}).get("metrics")
        if str(member.state) not in LIVE_STATES or not address:
            continue
        groups.append({
            "targets": [address],
            "labels": {
                "cynode_node": member.id,
                "cynode_cluster": cluster,
                "cynode_roles": ",".join(sorted(member.meta.get("roles", []))),
                "__meta_cynode_state": str(member.state),
                "__meta_cynode_version": str(member.meta.get("version", "")),
            },
        })
    return groups

"""HTTP routes every node answers: /healthz, /readyz, /metrics and the cluster introspection of
ARCHITECTURE section 12 (/v1/cluster/members, /v1/cluster/leader).

Served on `[metrics] listen` by the daemon, and on the gateway's port when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from .api_keys import ApiKeyStore, require
from .errors import AuthError, UnavailableError
from .leader_record import LeaderInfo, read_leader
from .openai_errors import response_for
from .telemetry import Telemetry

if TYPE_CHECKING:
    from .gossip_agent import GossipAgent
    from .redis_conn import RedisConnection

Readiness = Callable[[], dict[str, tuple[bool, str]]]


def _json(body) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def node_routes(telemetry: Telemetry, readiness: Readiness) -> list[web.RouteDef]:
    async def healthz(_: web.Request) -> web.Response:
        return _json({"status": "ok", "node": telemetry.node_id})

    async def readyz(_: web.Request) -> web.Response:
        roles = readiness()
        ready = bool(roles) and all(ok for ok, _ in roles.values())
        body = {"ready": ready, "roles": {name: {"ready": ok, "detail": detail} for name, (ok, detail) in roles.items()}}
        return web.Response(body=orjson.dumps(body), status=200 if ready else 503, content_type="application/json")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=telemetry.render(), headers={"Content-Type": telemetry.content_type})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)]


def cluster_routes(gossip: GossipAgent | None, api_keys: ApiKeyStore,
                   redis: RedisConnection | None = None) -> list[web.RouteDef]:
    """Every node's view of the cluster (admin key). The leader comes from Redis where this node
    has a connection, else from what coordinators publish in gossip."""

    def admin(request: web.Request) -> None:
        require(api_keys.authenticate(request.headers.get("Authorization")), "admin")

    async def members(request: web.Request) -> web.Response:
        try:
            admin(request)
        except AuthError as exc:
            return response_for(exc)
        return _json({"members": gossip.members() if gossip else []})

    async def leader(request: web.Request) -> web.Response:
        try:
            admin(request)
            found = await read_leader(redis) if redis is not None else leader_from_gossip(gossip)
            if found is None:
                raise UnavailableError("no coordinator leader is known right now", retry_after=2)
        except (AuthError, UnavailableError) as exc:
            return response_for(exc)
        return _json({"id": found.id, "epoch": found.epoch, "address": found.address})

    return [web.get("/v1/cluster/members", members), web.get("/v1/cluster/leader", leader)]


def leader_from_gossip(gossip: GossipAgent | None) -> LeaderInfo | None:
    """The live coordinator announcing the highest leader epoch in its gossip metadata."""
    return leader_among(gossip.members_raw() if gossip else ())


def leader_among(members) -> LeaderInfo | None:
    """Of these gossip members, the live coordinator announcing the highest leader epoch (two may
    both claim it for a moment around a failover: the higher epoch is the real one)."""
    best: LeaderInfo | None = None
    for member in members:
        epoch = int(member.meta.get("leader_epoch", 0) or 0)
        address = member.meta.get("addr", {}).get("coordinator")
        if epoch and address and str(member.state) == "alive" and (best is None or epoch > best.epoch):
            best = LeaderInfo(id=member.id, address=address, epoch=epoch)
    return best

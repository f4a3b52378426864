"""Node-level HTTP routes every node answers: /healthz, /readyz, /metrics.

Served on `[metrics] listen` by the daemon, and on the gateway's port when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from .api_keys import ApiKeyStore, require
from .errors import AuthError
from .telemetry import Telemetry

if TYPE_CHECKING:
    from .membership import Membership

Readiness = Callable[[], dict[str, tuple[bool, str]]]


def node_routes(telemetry: Telemetry, readiness: Readiness) -> list[web.RouteDef]:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": telemetry.node_id})

    async def readyz(_: web.Request) -> web.Response:
        roles = readiness()
        ready = bool(roles) and all(ok for ok, _ in roles.values())
        body = {"ready": ready, "roles": {name: {"ready": ok, "detail": detail} for name, (ok, detail) in roles.items()}}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=telemetry.render(), headers={"Content-Type": telemetry.content_type})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)]


def cluster_routes(membership: "Membership | None", api_keys: ApiKeyStore) -> list[web.RouteDef]:
    """`/v1/cluster/members`: every node's view of the cluster (admin key)."""

    async def members(request: web.Request) -> web.Response:
        try:
            require(api_keys.authenticate(request.headers.get("Authorization")), "admin")
        except AuthError as exc:
            kind = "authentication_error" if exc.status == 401 else "permission_error"
            body = {"error": {"message": exc.message, "type": kind, "param": None, "code": exc.code}}
            return web.json_response(body, status=exc.status)
        return web.json_response({"members": membership.members() if membership else []})

    return [web.get("/v1/cluster/members", members)]

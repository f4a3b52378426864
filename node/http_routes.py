"""Node-level HTTP routes every node answers: /healthz, /readyz, /metrics.

Served on `[metrics] listen` by the daemon, and on the gateway's port when it runs.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from .telemetry import Telemetry

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

"""The status page and the operator endpoints every node's HTTP ports answer.

    GET /                                 the status page (static HTML; a login form asks for an admin key)
    GET /status/{asset}                   its script and style sheet, served from the package (no CDN)
    GET /v1/cluster/overview              the JSON the page draws (admin key)
    GET /v1/cluster/prometheus-targets    Prometheus http_sd_configs targets (admin key)

The page itself holds no data, so it is served without a key; the browser keeps the key the operator
types in `sessionStorage` (gone when the tab closes, never in a cookie, so no other site can make
the browser send it) and sends it as `Authorization: Bearer` on each JSON call. A strict
Content-Security-Policy allows only this origin's script and style, and the script writes member
names and model ids as text, never as HTML.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .cluster_overview import overview
from .operator_view import OperatorView
from .prometheus_sd import prometheus_targets

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"status.js": "text/javascript", "status.css": "text/css", "favicon.svg": "image/svg+xml"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def operator_routes(view: OperatorView) -> list[web.RouteDef]:
    cache: dict[str, bytes] = {}

    def asset(name: str) -> bytes:
        if name not in cache:
            cache[name] = (STATIC / name).read_bytes()
        return cache[name]

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=asset("status.html"), content_type="text/html", charset="utf-8",
                            headers={**PAGE_HEADERS, "Cache-Control": "no-cache"})

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["asset"]
        if name not in ASSETS:  # a fixed list: nothing else under the package is reachable
            raise web.HTTPNotFound(text=f"no status asset {name!r}")
        return web.Response(body=asset(name), headers={**PAGE_HEADERS, "Content-Type": ASSETS[name],
                                                       "Cache-Control": "max-age=300"})

    async def cluster_overview(request: web.Request) -> web.Response:
        if (refusal := view.refuse(request)) is not None:
            return refusal
        body = overview(node_id=view.node_id, cluster=view.cluster, members=view.members(),
                        leader=await view.leader(), history=view.history)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def targets(request: web.Request) -> web.Response:
        if (refusal := view.refuse(request)) is not None:
            return refusal
        return web.json_response(prometheus_targets(view.members(), view.cluster), headers={"Cache-Control": "no-store"})

    return [
        web.get("/", page),
        web.get("/status/{asset}", static),
        web.get("/v1/cluster/overview", cluster_overview),
        web.get("/v1/cluster/prometheus-targets", targets),
    ]

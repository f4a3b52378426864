"""The gateway's aiohttp application: routes, auth, and errors in OpenAI's shape."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from cynode.errors import CynodeError
from cynode.openai_errors import error_response, response_for
from cynode.rpc import common_pb2, coordinator_pb2

from . import chat_ws, files_api, fine_tuning_api, responses_api
from . import openai_format as fmt
from .auth import identify
from .chat import chat_completions
from .completions_api import completions
from .embeddings_api import embeddings
from .guards import ClientGuards, guard_middleware
from .keys_api import admin_routes
from .models_api import get_model
from .openapi import openapi_json
from .state import LIMIT_HEADERS, GatewayState

log = logging.getLogger(__name__)


def build_app(state: GatewayState, node_routes: list[web.RouteDef], guards: ClientGuards | None = None) -> web.Application:
    """`guards`: per-client limits checked inside the error mapping, before authentication (guards.py)."""
    middlewares = [_errors_and_metrics, *([guard_middleware(guards)] if guards is not None else []), identify]
    app = web.Application(middlewares=middlewares, client_max_size=state.config.max_body_bytes)
    app["state"] = state
    app.on_response_prepare.append(_limit_headers)
    app.add_routes([
        web.post("/v1/chat/completions", chat_completions),
        web.post("/v1/completions", completions),
        web.post("/v1/embeddings", embeddings),
        *responses_api.routes(),
        *chat_ws.routes(),
        web.get("/v1/models", list_models),
        web.get("/v1/models/{model:.+}", get_model),
        web.get("/v1/cluster/status", cluster_status),
        *admin_routes(),
        *files_api.routes(),
        *fine_tuning_api.routes(),
        web.get("/openapi.json", openapi_json),
        *node_routes,
    ])
    return app


def _json(body) -> web.Response:
    return web.Response(body=fmt.json_bytes(body), content_type="application/json")


async def list_models(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "inference")
    models = (await state.upstream.call("ListModels", common_pb2.ListModelsRequest())).models
    created = int(time.time())
    visible = [(m.id, "cynode") for m in models if key.allows_model(m.id)]
    return _json(fmt.model_list(visible, created))


async def cluster_status(request: web.Request) -> web.Response:
    """Leader, queue depths and workers as the leader sees them (`cynode status` prints this)."""
    state: GatewayState = request.app["state"]
    state.authenticate(request, "admin")
    reply = await state.upstream.call("Status", coordinator_pb2.StatusRequest())
    return _json({
        "leader": {"id": reply.leader_id, "epoch": reply.epoch, "address": reply.leader_address} if reply.leader_id else None,
        "queue": {"pending": reply.queue_pending, "inflight": reply.queue_inflight, "dead": reply.queue_dead},
        "cache": {"entries": reply.cache_entries, "hit_rate": round(reply.cache_hit_rate, 4)},
        "workers": [
            {"id": w.id, "address": w.address, "state": "healthy" if w.healthy else "unhealthy", "breaker": w.breaker,
             "active": w.active, "leased": w.leased, "capacity": w.capacity, "weight": w.weight, "models": list(w.models)}
            for w in reply.workers
        ],
    })


async def _limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The key's x-ratelimit-* headers on every answer that charged a limit (streams and 429s too)."""
    headers = request.get(LIMIT_HEADERS)
    if headers:
        response.headers.update(headers)


@web.middleware
async def _errors_and_metrics(request: web.Request, handler) -> web.StreamResponse:
    state: GatewayState = request.app["state"]
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    started = time.monotonic()
    state.in_flight.enter()
    try:
        response = await handler(request)
    except CynodeError as exc:
        if exc.status >= 500 and exc.status != 503:
            log.error("request %s %s failed: %s", request.method, request.path, exc.message)
        response = response_for(exc)
    except web.HTTPException as exc:
        # aiohttp's own 404/405/413: same JSON error shape as everything else.
        response = error_response(exc.status, exc.reason if exc.status != 404 else f"no route {request.method} {request.path}",
                                  headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        response = error_response(500, "internal error; the gateway log has the details", code="internal_error")
    finally:
        state.in_flight.leave()
    state.metrics.requests.labels(route, str(response.status)).inc()
    state.metrics.latency.labels(route).observe(time.monotonic() - started)
    return response

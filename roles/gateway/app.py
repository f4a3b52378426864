"""The gateway's aiohttp application: routes, auth, and errors in OpenAI's shape."""

from __future__ import annotations

import json
import logging
import time

from aiohttp import web

from cynode.errors import AuthError, CapacityError, CynodeError, RequestError, UnavailableError
from cynode.leader_record import read_leader
from cynode.redis_conn import RedisConnection
from cynode.rpc import common_pb2, coordinator_pb2

from . import openai_format as fmt
from .chat import chat_completions
from .request_context import GatewayState

log = logging.getLogger(__name__)


def build_app(state: GatewayState, redis: RedisConnection | None, node_routes: list[web.RouteDef]) -> web.Application:
    app = web.Application(middlewares=[_errors_and_metrics], client_max_size=state.config.max_body_bytes)
    app["state"] = state
    app["redis"] = redis
    app.add_routes([
        web.post("/v1/chat/completions", chat_completions),
        web.get("/v1/models", list_models),
        web.get("/v1/cluster/leader", cluster_leader),
        web.get("/v1/cluster/status", cluster_status),
        *node_routes,
    ])
    return app


async def list_models(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "inference")
    models = (await state.upstream.call("ListModels", common_pb2.ListModelsRequest())).models
    created = int(time.time())
    visible = [(m.id, "cynode") for m in models if key.allows_model(m.id)]
    return web.json_response(fmt.model_list(visible, created))


async def cluster_leader(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    state.authenticate(request, "admin")
    redis: RedisConnection | None = request.app["redis"]
    leader = await read_leader(redis) if redis else None
    if leader is None:
        raise UnavailableError("no coordinator leader is known right now", retry_after=2)
    return web.json_response({"id": leader.id, "epoch": leader.epoch, "address": leader.address})


async def cluster_status(request: web.Request) -> web.Response:
    """Leader, queue depths and workers as the leader sees them (`cynode status` prints this)."""
    state: GatewayState = request.app["state"]
    state.authenticate(request, "admin")
    reply = await state.upstream.call("Status", coordinator_pb2.StatusRequest())
    return web.json_response({
        "leader": {"id": reply.leader_id, "epoch": reply.epoch, "address": reply.leader_address} if reply.leader_id else None,
        "queue": {"pending": reply.queue_pending, "inflight": reply.queue_inflight, "dead": reply.queue_dead},
        "cache": {"entries": reply.cache_entries, "hit_rate": round(reply.cache_hit_rate, 4)},
        "workers": [
            {"id": w.id, "address": w.address, "state": "healthy" if w.healthy else "unhealthy", "breaker": w.breaker,
             "active": w.active, "leased": w.leased, "capacity": w.capacity, "weight": w.weight, "models": list(w.models)}
            for w in reply.workers
        ],
    })


def _error(status: int, message: str, *, param=None, code=None, headers=None) -> web.Response:
    body = fmt.error_body(message, type=fmt.error_type_for_status(status), param=param, code=code)
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def _errors_and_metrics(request: web.Request, handler) -> web.StreamResponse:
    state: GatewayState = request.app["state"]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.monotonic()
    state.in_flight.enter()
    try:
        response = await handler(request)
    except AuthError as exc:
        response = _error(exc.status, exc.message, code=exc.code)
    except RequestError as exc:
        response = _error(exc.status, exc.message, param=exc.param, code=exc.code)
    except CapacityError as exc:
        retry = {"Retry-After": str(max(1, round(exc.retry_after or 1)))}
        response = _error(429, exc.message, code="queue_full", headers=retry)
    except UnavailableError as exc:
        retry = {"Retry-After": str(max(1, round(exc.retry_after or 1)))}
        response = _error(503, exc.message, code="unavailable", headers=retry)
    except CynodeError as exc:
        log.error("request %s %s failed: %s", request.method, request.path, exc)
        response = _error(500, exc.message, code="internal_error")
    except web.HTTPException as exc:
        # aiohttp's own 404/405/413: same JSON error shape as everything else.
        response = _error(exc.status, exc.reason if exc.status != 404 else f"no route {request.method} {request.path}",
                          headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except json.JSONDecodeError as exc:  # defensive: the schema layer normally catches this
        response = _error(400, f"Invalid JSON body: {exc}", code="invalid_json")
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        response = _error(500, "internal error; the gateway log has the details", code="internal_error")
    finally:
        state.in_flight.leave()
    state.metrics.requests.labels(route, str(response.status)).inc()
    state.metrics.latency.labels(route).observe(time.monotonic() - started)
    return response

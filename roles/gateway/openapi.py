"""`GET /openapi.json`: the OpenAPI 3.1 document of the gateway, built from its routes and schemas.

Built once from the application's router, so every route it serves is in it: an operation known
to `OPERATIONS` gets its request and response schemas (the pydantic models of `openapi_models`),
any other route (a node's health and metrics, say) a plain entry named after its handler. Error
answers share OpenAI's error envelope.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass

import orjson
from aiohttp import web
from cynode import __version__
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import openapi_models as m
from . import openapi_responses as r

__all__ = ["OPERATIONS", "Operation", "build_document", "openapi_json"]

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    stream: type[BaseModel] | None = None  # the schema of each SSE `data:` event, when the body may stream
    scope: str | None = "inference"  # the API-key scope it needs; None: no key
    typed_events: bool = False  # the stream is `event:`/`data:` pairs with no `[DONE]` (the Responses API)
    # OpenAPI links from the 200 answer: name -> (operationId, {parameter: runtime expression})
    links: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = ()


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/v1/chat/completions"): Operation("Create a chat completion", m.ChatCompletionRequest, m.ChatCompletion,
                                                m.ChatCompletionChunk),
    ("POST", "/v1/completions"): Operation("Create a text completion", m.CompletionRequest, m.TextCompletion,
                                           m.TextCompletion),
    ("POST", "/v1/embeddings"): Operation("Create embeddings", m.EmbeddingRequest, m.EmbeddingList),
    ("POST", "/v1/responses"): Operation("Create a response (the Responses API)", r.ResponseCreateRequest, r.Response,
                                         r.ResponseStreamEvent, typed_events=True, links=(
        ("retrieve", "get_v1_responses_response_id", (("response_id", "$response.body#/id"),)),
        ("delete", "delete_v1_responses_response_id", (("response_id", "$response.body#/id"),)))),
    ("GET", "/v1/responses/{response_id}"): Operation("Retrieve a stored response", response=r.Response),
    ("DELETE", "/v1/responses/{response_id}"): Operation("Delete a stored response", response=r.ResponseDeleted),
    ("GET", "/v1/chat/completions/ws"): Operation(
        "Chat completions over a WebSocket: upgrade, then one request body per message (docs/api.md)"),
    ("GET", "/v1/models"): Operation("List the models healthy workers serve", response=m.ModelList),
    ("GET", "/v1/models/{model}"): Operation("Retrieve one model by id or alias", response=m.Model),
    ("GET", "/v1/cluster/status"): Operation("Leader, queue and workers", response=m.ClusterStatus, scope="admin"),
    ("GET", "/openapi.json"): Operation("This document", scope=None),
    ("GET", "/healthz"): Operation("Liveness", scope=None),
    ("GET", "/readyz"): Operation("Readiness", scope=None),
    ("GET", "/metrics"): Operation("Prometheus metrics", scope=None),
}

_ERRORS = {
    "400": "The request is invalid (the error names the parameter)",
    "401": "No valid API key",
    "403": "The key may not do this",
    "404": "No such model, route or stored response",
    "429": "Too many requests or a full queue (see Retry-After)",
    "503": "No worker or coordinator can answer now (see Retry-After)",
}


def _path_of(resource: web.AbstractResource) -> str:
    info = resource.get_info()
    path = info.get("path") or info.get("formatter") or resource.canonical
    # aiohttp writes `{model:.+}` for a regex placeholder; OpenAPI wants `{model}`.
    out, depth, name = [], 0, False
    for ch in path:
        if ch == "{":
            depth, name = depth + 1, True
            out.append(ch)
        elif ch == "}":
            depth -= 1
            if depth == 0:
                name = False
                out.append(ch)
        elif ch == ":" and depth == 1:
            name = False
        elif depth == 0 or name:
            out.append(ch)
    return "".join(out)


def _routes(app: web.Application) -> list[tuple[str, str, object]]:
    found = []
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS") or route.resource is None:
            continue
        found.append((route.method, _path_of(route.resource), route.handler))
    return found


def build_document(app: web.Application) -> dict:
    models = {op.request for op in OPERATIONS.values()} | {op.response for op in OPERATIONS.values()} | {
        op.stream for op in OPERATIONS.values()} | {m.ErrorResponse}
    models.discard(None)
    keyed = sorted(((model, "validation" if model in {op.request for op in OPERATIONS.values()} else "serialization")
                    for model in models), key=lambda pair: pair[0].__name__)
    _, schemas = models_json_schema(keyed, ref_template=REF)
    error_ref = {"$ref": REF.format(model="ErrorResponse")}
    paths: dict[str, dict] = {}
    for method, path, handler in _routes(app):
        op = OPERATIONS.get((method, path)) or Operation(_summary(handler))
        entry: dict = {"summary": op.summary, "operationId": _operation_id(method, path)}
        if op.scope:
            entry["security"] = [{"bearer": []}]
            entry["description"] = f"Needs an API key with the `{op.scope}` scope."
        parameters = [{"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
                      for part in path.split("/") if part.startswith("{")]
        if parameters:
            entry["parameters"] = parameters
        if op.request is not None:
            entry["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": {"$ref": REF.format(model=op.request.__name__)}}}}
        ok: dict = {"description": "OK"}
        content = {}
        if op.response is not None:
            content["application/json"] = {"schema": {"$ref": REF.format(model=op.response.__name__)}}
        if op.stream is not None:
            events = (f"`event: <type>` and `data: <{op.stream.__name__}>` pairs" if op.typed_events
                      else f"`data: <{op.stream.__name__}>` events, then `data: [DONE]`")
            content["text/event-stream"] = {
                "schema": {"type": "string", "description": events
                           + "; `: keep-alive` comments while the first token is awaited."},
                "x-event-schema": {"$ref": REF.format(model=op.stream.__name__)}}
        if content:
            ok["content"] = content
        if op.links:
            ok["links"] = {name: {"operationId": target, "parameters": dict(parameters)}
                           for name, target, parameters in op.links}
        entry["responses"] = {"200": ok, **{code: {"description": text, "content": {
            "application/json": {"schema": error_ref}}} for code, text in _ERRORS.items()}}
        paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "cynode", "version": __version__,
                 "description": "OpenAI-compatible API of a cynode cluster (any node with the gateway role)."},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": schemas.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _summary(handler) -> str:
    doc = inspect.getdoc(handler) or ""
    return doc.split("\n")[0] or getattr(handler, "__name__", "operation")


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}") for w in path.strip("/").replace(".", "_").split("/") if w]
    return "_".join([method.lower(), *words]) or method.lower()


_BUILT: weakref.WeakKeyDictionary[web.Application, bytes] = weakref.WeakKeyDictionary()


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI document of this gateway (no key needed: it holds no secret)."""
    body = _BUILT.get(request.app)
    if body is None:  # the routes are fixed once the app runs: build once
        body = _BUILT[request.app] = orjson.dumps(build_document(request.app))
    return web.Response(body=body, content_type="application/json")

"""`/openapi.json`: every route the gateway serves is in it, with the schemas of its bodies."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from cynode.config.sections import GatewaySection
from cynode.http_routes import cluster_routes, node_routes
from cynode.roles.gateway import openapi_models as m
from cynode.roles.gateway.app import build_app
from cynode.roles.gateway.openapi import OPERATIONS, _path_of, build_document
from cynode.roles.gateway.openai_schema import parse_chat_request, parse_completion_request
from cynode.telemetry import Telemetry


@pytest.fixture
def app():
    routes = node_routes(Telemetry("openapi-test"), lambda: {}) + cluster_routes(None, None, None)
    # Building the document reads only the router; no request is served here.
    return build_app(SimpleNamespace(config=GatewaySection()), routes)


def test_every_route_the_app_serves_is_in_the_document(app):
    document = build_document(app)
    served = {(r.method.lower(), _path_of(r.resource)) for r in app.router.routes() if r.method not in ("HEAD", "OPTIONS")}
    documented = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert served and served == documented


def test_the_inference_routes_have_request_and_response_schemas(app):
    document = build_document(app)
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "/v1/models/{model}" in document["paths"]
    for name in ("ChatCompletionRequest", "CompletionRequest", "ChatCompletion", "TextCompletion", "ErrorResponse"):
        assert name in document["components"]["schemas"]
    json.dumps(document)  # serialisable as it is served


def test_every_known_operation_is_a_route_of_the_app(app):
    served = {(r.method, _path_of(r.resource)) for r in app.router.routes()}
    assert set(OPERATIONS) <= served


def _example(model) -> dict:
    return {"model": "x", "messages": [{"role": "user", "content": "hi"}]} if model is m.ChatCompletionRequest else {
        "model": "x", "prompt": "hi"}


@pytest.mark.parametrize("model, parse", [(m.ChatCompletionRequest, parse_chat_request),
                                          (m.CompletionRequest, parse_completion_request)])
def test_a_body_the_schema_describes_is_one_the_handler_accepts(model, parse):
    # Fill every optional field the schema declares with a value the model accepts and that cynode
    # supports: the parser must take all of them (the schema may not promise what the handler refuses).
    body = _example(model) | {"temperature": 0.5, "top_p": 0.9, "top_k": 5, "max_tokens": 4, "seed": 1,
                              "presence_penalty": 0.1, "frequency_penalty": 0.1, "repetition_penalty": 1.1,
                              "stop": ["x"], "n": 2, "user": "u", "stream": True,
                              "stream_options": {"include_usage": True}}
    model.model_validate(body)
    parsed = parse(json.dumps(body).encode())
    assert parsed.n == 2 and parsed.sampling.max_tokens == 4 and parsed.include_usage


def test_docs_api_md_lists_every_endpoint_of_the_document(app):
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    document = build_document(app)
    missing = [f"{m.upper()} {path}" for path, ops in document["paths"].items() for m in ops
               if f"{m.upper()} {path}" not in page]
    assert not missing, f"docs/api.md does not list: {missing}"

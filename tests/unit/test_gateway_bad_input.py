"""Inputs schemathesis found answered with a 500, each now a 400 naming what was wrong (through a real
gateway in front of the real request path on the sim engine)."""

from __future__ import annotations

import pytest

from cynode.api_keys import ApiKey, ApiKeyStore
from gateway_harness import GatewayHarness

pytestmark = pytest.mark.timeout(60)

ADMIN = "sk-cynode-admin-0123456789abcdef"


@pytest.fixture
async def gw(redis_conn):
    keys = ApiKeyStore.from_keys([(ADMIN, ApiKey("admin", scopes=frozenset({"inference", "training", "admin"})))])
    started = await GatewayHarness.start(redis_conn, keys)
    yield started
    await started.stop()


@pytest.mark.parametrize("content_type, body", [
    ("multipart/form-data", b""),  # no boundary
    ("multipart/form-data; boundary=xyz", b"this is not multipart"),
])
async def test_a_malformed_multipart_upload_is_a_400(gw, content_type, body):
    reply = await gw.client.post("/v1/files", content=body, headers={**gw.auth(ADMIN), "Content-Type": content_type})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "invalid_multipart" and reply.json()["error"]["param"] == "file"


@pytest.mark.parametrize("path, name", [("/v1/chat/completions", "max_tokens"), ("/v1/chat/completions", "top_k"),
                                        ("/v1/completions", "max_tokens"), ("/v1/responses", "max_output_tokens")])
async def test_a_number_beyond_what_the_wire_carries_is_a_400(gw, path, name):
    body = {"model": "sim", name: 99999999999999999}
    body |= {"prompt": "hi"} if path == "/v1/completions" else (
        {"input": "hi"} if path == "/v1/responses" else {"messages": [{"role": "user", "content": "hi"}]})
    reply = await gw.client.post(path, json=body, headers=gw.auth(ADMIN))
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == name and error["message"] == f"{name} must be at most 2147483647; got 99999999999999999"

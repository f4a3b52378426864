"""Who may call the gateway, over real HTTP: the auth matrix for file keys and keys made at run
time, the admin API for keys (with its audit lines), and limits on the answers."""

from __future__ import annotations

import logging
import time

import pytest

from cynode.api_keys import ApiKey, ApiKeyStore
from cynode.roles.gateway.keys_store import KeyRecord
from gateway_harness import GatewayHarness

ADMIN = "sk-cynode-admin-0123456789abcdef"
READER = "sk-cynode-reader-0123456789abcdef"
TRAINER = "sk-cynode-trainer-0123456789abcdef"
OLD = "sk-cynode-old-0123456789abcdef"


@pytest.fixture
async def gw(redis_conn):
    keys = ApiKeyStore.from_keys([
        (ADMIN, ApiKey("admin", scopes=frozenset({"inference", "training", "admin"}))),
        (READER, ApiKey("reader", models=("other-*",))),
        (TRAINER, ApiKey("trainer", scopes=frozenset({"training"}))),
        (OLD, ApiKey("old", expires_at=time.time() - 1)),
    ])
    started = await GatewayHarness.start(redis_conn, keys)
    yield started
    await started.stop()


def error_of(reply) -> tuple[int, str]:
    return reply.status_code, reply.json()["error"]["code"]


async def test_the_auth_matrix_for_file_keys(gw):
    body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}]}
    assert error_of(await gw.client.post("/v1/chat/completions", json=body)) == (401, "missing_api_key")
    assert error_of(await gw.chat("sk-cynode-nobody-000000000000")) == (401, "invalid_api_key")
    assert error_of(await gw.chat(OLD)) == (401, "expired_api_key")
    assert error_of(await gw.chat(TRAINER)) == (403, "insufficient_scope")
    assert error_of(await gw.chat(READER)) == (403, "model_not_allowed")
    reply = await gw.chat(ADMIN)
    assert reply.status_code == 200 and reply.headers["X-Cache"] == "miss"


async def test_a_key_made_at_run_time_works_until_it_is_revoked_and_every_admin_call_is_audited(gw, caplog):
    caplog.set_level(logging.INFO, logger="cynode.audit")
    spec = {"name": "ci", "scopes": ["inference"], "models": ["sim"], "requests_per_minute": 100}
    assert error_of(await gw.client.post("/v1/admin/keys", json=spec, headers=gw.auth(READER))) == (403, "insufficient_scope")
    made = await gw.client.post("/v1/admin/keys", json=spec, headers=gw.auth(ADMIN))
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert key.startswith("sk-cynode-") and made.json()["state"] == "active"
    assert error_of(await gw.client.post("/v1/admin/keys", json=spec, headers=gw.auth(ADMIN))) == (409, "key_exists")

    reply = await gw.chat(key)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-ratelimit-remaining-requests"] == "99"
    assert error_of(await gw.chat(key, model="other")) == (403, "model_not_allowed")

    listed = (await gw.client.get("/v1/admin/keys", headers=gw.auth(ADMIN))).json()["data"]
    assert {k["name"]: k["source"] for k in listed} == {"admin": "file", "reader": "file", "trainer": "file",
                                                          "old": "file", "ci": "redis"}
    assert all("key" not in k and "sha256" not in k for k in listed)

    await gw.state.limits.wait()
    usage = (await gw.client.get("/v1/admin/keys/ci/usage?days=2", headers=gw.auth(ADMIN))).json()
    assert usage["data"][0]["requests"] == 1 and usage["data"][0]["completion_tokens"] == 3
    assert usage["data"][1]["requests"] == 0

    revoked = await gw.client.delete("/v1/admin/keys/ci", headers=gw.auth(ADMIN))
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert error_of(await gw.chat(key)) == (401, "invalid_api_key")
    assert error_of(await gw.client.delete("/v1/admin/keys/admin", headers=gw.auth(ADMIN))) == (409, "key_in_file")
    assert error_of(await gw.client.delete("/v1/admin/keys/nope", headers=gw.auth(ADMIN))) == (404, "key_not_found")

    lines = [r.getMessage() for r in caplog.records if r.name == "cynode.audit"]
    assert any("admin created API key 'ci'" in line for line in lines)
    assert any("admin revoked API key 'ci'" in line for line in lines)
    assert any("admin listed API keys" in line for line in lines)
    assert any("usage of API key 'ci'" in line for line in lines)
    assert not any(key in line or key[10:] in line for line in lines)


async def test_a_run_time_key_past_its_expiry_is_refused(gw):
    key = await gw.state.runtime_keys.create(KeyRecord(name="brief", created=time.time(), expires_at=time.time() - 1))
    assert error_of(await gw.chat(key)) == (401, "expired_api_key")


async def test_bad_key_specs_are_400s_naming_the_field(gw):
    for spec, param in (({"scopes": ["inference"]}, "name"), ({"name": "x", "scopes": ["root"]}, "scopes"),
                        ({"name": "x", "requests_per_minute": 0}, "requests_per_minute"),
                        ({"name": "x", "colour": "red"}, "colour"), ({"name": "x", "expires_at": 5}, "expires_at")):
        reply = await gw.client.post("/v1/admin/keys", json=spec, headers=gw.auth(ADMIN))
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param, (spec, reply.text)


async def test_a_limited_key_gets_429_with_headers_streamed_or_not(gw):
    made = await gw.client.post("/v1/admin/keys", json={"name": "tight", "requests_per_minute": 2},
                                headers=gw.auth(ADMIN))
    key = made.json()["key"]
    streamed = await gw.chat(key, stream=True)
    assert streamed.status_code == 200 and streamed.headers["x-ratelimit-remaining-requests"] == "1"
    assert "data: [DONE]" in streamed.text
    assert (await gw.chat(key)).status_code == 200
    refused = await gw.chat(key, stream=True)
    assert error_of(refused) == (429, "rate_limit_exceeded")
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.json()["error"]["type"] == "rate_limit_error"


async def test_the_keys_priority_is_the_queue_priority(gw):
    made = await gw.client.post("/v1/admin/keys", json={"name": "vip", "priority": 9}, headers=gw.auth(ADMIN))
    reply = await gw.chat(made.json()["key"])
    assert reply.status_code == 200
    await gw.path.settled()
    from cynode.roles.coordinator.service import _task_id

    task = await gw.path.queue.get(_task_id(reply.headers["X-Request-Id"]))
    assert task.priority == 9


async def test_the_keys_command_line_makes_lists_reads_usage_of_and_revokes_a_key(gw, capsys):
    import asyncio

    from cynode.cli import main

    async def cli(*argv: str) -> str:
        code = await asyncio.to_thread(main, ["keys", *argv, "--url", gw.url, "--key", ADMIN])
        assert code == 0
        return capsys.readouterr().out

    key = (await cli("create", "cli-made", "--model", "sim", "--rpm", "50", "--expires", "30d")).strip()
    assert key.startswith("sk-cynode-") and "\n" not in key
    assert (await gw.chat(key)).status_code == 200
    listing = await cli("list")
    assert "cli-made" in listing and "rpm=50" in listing and key not in listing
    await gw.state.limits.wait()
    usage = await cli("usage", "cli-made", "--days", "1")
    assert usage.splitlines()[1].split()[1] == "1"  # one request today
    assert "revoked cli-made" in await cli("revoke", "cli-made")
    assert (await gw.chat(key)).status_code == 401

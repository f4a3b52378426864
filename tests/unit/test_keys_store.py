"""Keys made at run time, against a real Redis: stored as SHA-256 only, names unique, a revocation
seen through the cache, and a key known a moment ago still known while Redis is away."""

from __future__ import annotations

import hashlib
import time

import pytest

from cynode.errors import RequestError, UnavailableError
from cynode.redis_conn import RedisConnection
from cynode.roles.gateway.keys_store import CACHE_S, KeyRecord, RuntimeKeys, parse_key_spec
from redis_harness import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_only_the_digest_is_stored_and_names_are_unique(redis_conn):
    store = RuntimeKeys(redis_conn)
    key = await store.create(KeyRecord(name="one", created=time.time()))
    values = [await redis_conn.client.get(k) for k in await redis_conn.client.keys(redis_conn.prefix + "apikey:*")]
    assert all(key not in (v or "") for v in values)
    assert await redis_conn.client.exists(redis_conn.key("apikey", hashlib.sha256(key.encode()).hexdigest()))
    with pytest.raises(RequestError) as info:
        await store.create(KeyRecord(name="one", created=time.time()))
    assert info.value.status == 409
    assert (await store.find(key)).name == "one"


async def test_a_revocation_elsewhere_holds_once_the_cache_lapses(redis_conn):
    clock = Clock()
    here, there = RuntimeKeys(redis_conn, clock=clock), RuntimeKeys(redis_conn, clock=clock)
    key = await here.create(KeyRecord(name="shared", created=time.time()))
    assert (await there.find(key)).name == "shared"
    await here.revoke("shared", time.time())
    assert await here.find(key) is None  # at once where it was revoked
    clock.now += CACHE_S
    assert await there.find(key) is None  # and on the other gateway after the cache lapses


async def test_a_key_known_a_moment_ago_is_still_known_while_redis_is_away(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    conn = RedisConnection(server.url, "away")
    clock = Clock()
    store = RuntimeKeys(conn, clock=clock)
    try:
        key = await store.create(KeyRecord(name="known", created=time.time()))
        assert (await store.find(key)).name == "known"
        server.stop()
        clock.now += 10 * CACHE_S
        assert (await store.find(key)).name == "known"
        with pytest.raises(UnavailableError):
            await store.find("sk-cynode-never-seen-before")
    finally:
        await conn.close()
        server.stop()


def test_a_spec_with_a_lifetime_expires_then():
    record = parse_key_spec({"name": "t", "expires_in": 60, "models": ["a*"], "tokens_per_day": 5}, now=1000.0)
    assert (record.expires_at, record.models, record.tokens_per_day) == (1060.0, ["a*"], 5)
    assert record.api_key().source == "redis" and record.state(now=1061.0) == "expired"

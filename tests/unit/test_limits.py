"""Per-key limits against the real Redis: each limit holds, a refusal charges nothing, settling makes
the token count exact, and two limiters (two gateways) on one Redis hold one limit between them."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from cynode.api_keys import ApiKey
from cynode.errors import RateLimitError
from cynode.redis_conn import RedisConnection
from cynode.roles.gateway.limits import UNBOUNDED_COMPLETION_ESTIMATE, Limiter, estimate_tokens, format_reset


@pytest.fixture
async def limiter(redis_conn):
    made = Limiter(redis_conn, request_timeout=60)
    await made.check()
    yield made
    await made.close()


def rid() -> str:
    return uuid.uuid4().hex


async def test_requests_per_minute_admits_the_limit_then_refuses_with_retry_after_and_headers(limiter):
    key = ApiKey("rpm", requests_per_minute=3)
    remaining = []
    for _ in range(3):
        admission = await limiter.admit(key, rid(), 10)
        remaining.append(admission.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    with pytest.raises(RateLimitError) as info:
        await limiter.admit(key, rid(), 10)
    err = info.value
    assert (err.status, err.code) == (429, "rate_limit_exceeded")
    assert 1 <= err.retry_after <= 120
    assert err.headers["x-ratelimit-limit-requests"] == "3"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-reset-requests"].endswith("s")
    assert "3 requests per minute" in err.message


async def test_a_refused_request_charges_no_other_limit(limiter):
    key = ApiKey("both", requests_per_minute=10, tokens_per_minute=100)
    first = await limiter.admit(key, rid(), 80)
    assert first.headers["x-ratelimit-remaining-tokens"] == "20"
    with pytest.raises(RateLimitError) as info:
        await limiter.admit(key, rid(), 80)  # the tokens limit refuses it...
    assert "tokens per minute" in info.value.message
    small = await limiter.admit(key, rid(), 5)  # ...and it used up no request of the rate
    assert small.headers["x-ratelimit-remaining-requests"] == "8"


async def test_settling_gives_back_what_the_estimate_overcharged(limiter):
    key = ApiKey("settle", tokens_per_minute=100)
    admission = await limiter.admit(key, rid(), 90)
    with pytest.raises(RateLimitError):
        await limiter.admit(key, rid(), 90)
    admission.settle(4, 6)  # the answer used 10 tokens, not 90
    await limiter.wait()
    again = await limiter.admit(key, rid(), 90)
    assert again.headers["x-ratelimit-remaining-tokens"] == "0"  # 10 used + 90 reserved


async def test_an_estimate_larger_than_the_limit_still_runs_alone(limiter):
    key = ApiKey("big", tokens_per_minute=50)
    admission = await limiter.admit(key, rid(), 5000)
    assert admission.charged == 50


async def test_concurrent_requests_per_key_are_capped_and_a_finished_one_frees_its_slot(limiter):
    key = ApiKey("conc", max_concurrent_requests=2)
    first, _second = await limiter.admit(key, rid(), 1), await limiter.admit(key, rid(), 1)
    with pytest.raises(RateLimitError) as info:
        await limiter.admit(key, rid(), 1)
    assert "2 requests in flight" in info.value.message
    first.settle(1, 1)
    await limiter.wait()
    await limiter.admit(key, rid(), 1)


async def test_a_daily_budget_refuses_with_insufficient_quota_and_usage_is_readable(limiter):
    key = ApiKey("budget", tokens_per_day=100)
    admission = await limiter.admit(key, rid(), 60)
    admission.settle(20, 40)
    await limiter.wait()
    with pytest.raises(RateLimitError) as info:
        await limiter.admit(key, rid(), 50)
    assert info.value.code == "insufficient_quota"
    assert info.value.retry_after >= 1
    await limiter.admit(key, rid(), 40)  # 60 + 40 fits exactly
    usage = await limiter.usage("budget", [admission.day, admission.month])
    assert usage[admission.day] == {"requests": 1, "prompt_tokens": 20, "completion_tokens": 40, "total_tokens": 100}


async def test_a_key_without_limits_costs_no_round_trip_at_admission_and_its_usage_is_counted(limiter):
    key = ApiKey("free")
    before = limiter._batch.round_trips
    admission = await limiter.admit(key, rid(), 10)
    assert limiter._batch.round_trips == before and admission.headers == {}
    admission.settle(3, 7)
    admission.settle(3, 7)  # a second settle is ignored
    await limiter.wait()
    usage = await limiter.usage("free", [admission.day])
    assert usage[admission.day] == {"requests": 1, "prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}


async def test_two_gateways_on_one_redis_admit_no_more_than_the_limit_between_them(redis_server, redis_conn):
    other_conn = RedisConnection(redis_server.url, redis_conn.prefix.split(":")[1])
    a, b = Limiter(redis_conn, request_timeout=60), Limiter(other_conn, request_timeout=60)
    key = ApiKey("shared", requests_per_minute=20)

    async def one(limiter: Limiter) -> bool:
        try:
            await limiter.admit(key, rid(), 1)
            return True
        except RateLimitError:
            return False

    try:
        results = await asyncio.gather(*(one(a if i % 2 else b) for i in range(60)))
        assert sum(results) == 20
    finally:
        await a.close()
        await b.close()
        await other_conn.close()


def test_estimates_and_reset_durations():
    assert estimate_tokens(400, 50) == 151
    assert estimate_tokens(0, None) == 1 + UNBOUNDED_COMPLETION_ESTIMATE
    assert [format_reset(ms) for ms in (0, 850, 1500, 12_400, 90_000)] == ["0ms", "850ms", "1.5s", "12s", "1m30s"]


async def test_a_gateway_without_redis_refuses_to_start_with_keys_that_set_limits(tmp_path):
    from cynode.api_keys import ApiKeyStore
    from cynode.config.sections import NodeConfig
    from cynode.errors import StartupError
    from cynode.peer_auth import PeerAuth
    from cynode.role import RoleContext
    from cynode.roles.gateway.role import GatewayRole
    from cynode.telemetry import Telemetry

    keys = ApiKeyStore.from_keys([("sk-a", ApiKey("free")), ("sk-b", ApiKey("metered", tokens_per_day=10))])
    ctx = RoleContext(config=NodeConfig(), telemetry=Telemetry("t"), peer_auth=PeerAuth((b"k" * 32,)), api_keys=keys)
    with pytest.raises(StartupError, match="metered"):
        await GatewayRole(ctx).start()


async def test_every_counter_the_limits_write_expires(limiter, redis_conn):
    """Windows, in-flight slots and usage hashes all carry a TTL (none is left to grow for ever),
    including after a settle and a second request in the same minute."""
    name = f"ttl-{rid()[:8]}"
    key = ApiKey(name, requests_per_minute=100, tokens_per_minute=10_000, max_concurrent_requests=5,
                 tokens_per_day=1_000_000, tokens_per_month=10_000_000)
    written = set()
    for _ in range(2):
        admission = await limiter.admit(key, rid(), 50)
        written |= {k async for k in redis_conn.client.scan_iter(match=f"*:{name}:*")}  # the in-flight set too
        admission.settle(10, 20)
        await limiter.wait()
    assert len(written) == 5, written  # the minute's two windows, the in-flight set, the day's and month's usage
    for k in [k async for k in redis_conn.client.scan_iter(match=f"*:{name}:*")]:
        ttl = await redis_conn.client.ttl(k)
        assert ttl > 0, f"{k} has no expiry ({ttl})"
    usage = await limiter.usage(name, [admission.day])
    assert usage[admission.day] == {"requests": 2, "prompt_tokens": 20, "completion_tokens": 40, "total_tokens": 60}
    in_flight = await limiter.admit(key, rid(), 50)
    assert await redis_conn.client.ttl(next(k for k in written if k.endswith(":conc"))) > 0
    in_flight.settle(0, 0)

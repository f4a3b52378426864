"""The prompt cache on a real Redis: what hits, what misses, TTL, the size bound, faithful replay."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from cynode.inference import ChatMessage
from cynode.roles.coordinator.prompt_cache import CachedResponse, PromptCache, cache_key
from cynode.sampling import SamplingParams
from fakes import FakeClock

MESSAGES = [ChatMessage("system", "Be brief."), ChatMessage("user", "What is the capital of France?")]
SAMPLING = SamplingParams(temperature=0.0, max_tokens=24, stop=("\n\n",))


@pytest.fixture
def redis(redis_conn):
    return redis_conn


def response(text="The capital of France is Paris.") -> CachedResponse:
    return CachedResponse(deltas=tuple(text.split(" ")), finish_reason="stop", prompt_tokens=30, completion_tokens=7, model="m")


async def test_an_identical_deterministic_request_hits_and_replays_the_original(redis):
    cache = PromptCache(redis, ttl=60, max_size=10)
    key = cache_key("m", "v1", MESSAGES, SAMPLING)
    assert await cache.get(key) is None
    await cache.put(key, response())
    replay = await cache.get(cache_key("m", "v1", list(MESSAGES), SamplingParams(temperature=0.0, max_tokens=24, stop=("\n\n",))))
    assert replay == response()
    assert replay.text == "ThecapitalofFranceisParis." and replay.deltas[0] == "The"
    assert cache.hits == 1 and cache.misses == 1 and cache.hit_rate == 0.5


@pytest.mark.parametrize("change", [
    {"model": "other"},
    {"version": "v2"},
    {"adapter": "lora-a@2"},
    {"messages": [ChatMessage("system", "Be brief."), ChatMessage("user", "What is the capital of Spain?")]},
    {"messages": [ChatMessage("user", "What is the capital of France?")]},
    {"sampling": replace(SAMPLING, max_tokens=25)},
    {"sampling": replace(SAMPLING, stop=(".",))},
    {"sampling": replace(SAMPLING, seed=1)},
    {"sampling": replace(SAMPLING, top_p=0.5)},
])
def test_any_change_of_model_version_adapter_messages_or_sampling_is_another_key(change):
    base = {"model": "m", "version": "v1", "messages": MESSAGES, "sampling": SAMPLING, "adapter": ""}
    assert cache_key(**{**base, **change}) != cache_key(**base)


def test_a_parameter_left_out_and_one_given_at_its_default_are_other_keys():
    # A model's default_sampling may differ from OpenAI's defaults, so "not given" is its own value.
    assert cache_key("m", "v1", MESSAGES, SAMPLING) != cache_key("m", "v1", MESSAGES, replace(SAMPLING, top_p=1.0))


def test_only_greedy_or_seeded_requests_count_as_deterministic():
    assert SamplingParams(temperature=0).deterministic
    assert SamplingParams(temperature=0.8, seed=3).deterministic
    assert not SamplingParams(temperature=0.8).deterministic
    assert not SamplingParams().deterministic  # OpenAI's default temperature is 1


async def test_entries_expire_after_the_ttl(redis):
    cache = PromptCache(redis, ttl=0.2, max_size=10)
    key = cache_key("m", "v1", MESSAGES, SAMPLING)
    await cache.put(key, response())
    assert await cache.get(key) is not None
    assert 0 < await redis.client.pttl(cache.entry_prefix + key) <= 200  # Redis itself expires it
    async with asyncio.timeout(5):
        while await cache.get(key) is not None:
            await asyncio.sleep(0.02)


async def test_the_size_bound_evicts_the_least_recently_used(redis):
    clock = FakeClock()
    cache = PromptCache(redis, ttl=60, max_size=3, clock=clock)
    keys = [cache_key("m", "v1", [ChatMessage("user", f"q{i}")], SAMPLING) for i in range(4)]
    for key in keys[:3]:
        clock.now += 1
        await cache.put(key, response())
    clock.now += 1
    assert await cache.get(keys[0]) is not None  # q0 becomes the most recently used
    clock.now += 1
    assert await cache.put(keys[3], response()) == 1
    assert await cache.size() == 3
    assert await cache.get(keys[1]) is None  # q1 was least recently used
    assert all([await cache.get(keys[0]), await cache.get(keys[2]), await cache.get(keys[3])])


def test_the_key_covers_the_guide_the_tools_and_the_tool_calls_of_the_messages():
    from cynode.inference import ToolCall
    from cynode.sampling import Guide

    base = cache_key("m", "v1", MESSAGES, SAMPLING)
    as_json = replace(SAMPLING, guide=Guide("json", '{"type":"object"}'))
    other_schema = replace(SAMPLING, guide=Guide("json", '{"type":"array"}'))
    keys = {base, cache_key("m", "v1", MESSAGES, as_json), cache_key("m", "v1", MESSAGES, other_schema),
            cache_key("m", "v1", MESSAGES, SAMPLING, tools='[{"type":"function","function":{"name":"f"}}]'),
            cache_key("m", "v1", MESSAGES, SAMPLING, tools='[{"type":"function","function":{"name":"g"}}]')}
    assert len(keys) == 5
    called = (*MESSAGES, ChatMessage("assistant", "", (ToolCall("c1", "f", "{}"),)))
    answered = (*MESSAGES, ChatMessage("assistant", "", (ToolCall("c1", "f", '{"a":1}'),)))
    assert cache_key("m", "v1", called, SAMPLING) != cache_key("m", "v1", answered, SAMPLING)
    # Messages without tool calls keep the keys they had before tools existed.
    assert cache_key("m", "v1", MESSAGES, SAMPLING) == base

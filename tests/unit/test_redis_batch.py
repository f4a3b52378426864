"""The group commit of Lua scripts on a real Redis: concurrent callers share round trips, a lone one
goes at once, every caller gets its own reply or error, and scripts Redis lost are loaded again."""

from __future__ import annotations

import asyncio

import redis.exceptions

from cynode.redis_batch import ScriptBatcher

INCR_BY = "return redis.call('INCRBY', ARGV[1], ARGV[2])"
FAIL = "return redis.error_reply('no: ' .. ARGV[1])"


async def test_a_lone_script_goes_at_once_in_a_round_trip_of_its_own(redis_conn):
    batcher = ScriptBatcher(redis_conn.client)
    script = redis_conn.client.register_script(INCR_BY)
    key = redis_conn.key("n")
    assert await batcher.run(script, [key, 5]) == 5
    assert await batcher.run(script, [key, 2]) == 7
    assert batcher.round_trips == 2
    await batcher.close()


async def test_concurrent_callers_share_round_trips_and_each_gets_its_own_reply(redis_conn):
    batcher = ScriptBatcher(redis_conn.client)
    script = redis_conn.client.register_script(INCR_BY)
    keys = [redis_conn.key(f"k{i}") for i in range(50)]
    replies = await asyncio.gather(*(batcher.run(script, [key, i + 1]) for i, key in enumerate(keys)))
    assert replies == [i + 1 for i in range(50)]
    assert batcher.round_trips <= 3  # the first alone, the other 49 together (at most in two goes)
    await batcher.close()


async def test_an_error_reaches_only_the_caller_whose_script_failed(redis_conn):
    batcher = ScriptBatcher(redis_conn.client)
    ok, fail = redis_conn.client.register_script(INCR_BY), redis_conn.client.register_script(FAIL)
    results = await asyncio.gather(batcher.run(ok, [redis_conn.key("a"), 1]), batcher.run(fail, ["x"]),
                                   batcher.run(ok, [redis_conn.key("a"), 1]), batcher.run(fail, ["y"]),
                                   return_exceptions=True)
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], redis.exceptions.ResponseError) and "no: x" in str(results[1])
    assert isinstance(results[3], redis.exceptions.ResponseError) and "no: y" in str(results[3])
    await batcher.close()


async def test_scripts_redis_forgot_are_loaded_again(redis_conn):
    batcher = ScriptBatcher(redis_conn.client)
    script = redis_conn.client.register_script(INCR_BY)
    key = redis_conn.key("f")
    await batcher.run(script, [key, 1])
    await redis_conn.client.script_flush()  # as after a Redis restart
    assert await asyncio.gather(*(batcher.run(script, [key, 1]) for _ in range(5))) == [2, 3, 4, 5, 6]
    await batcher.close()


async def test_a_lost_connection_fails_every_waiting_caller(redis_server):
    from cynode.redis_conn import RedisConnection

    conn = RedisConnection("redis://127.0.0.1:1/0", "nowhere")  # nothing listens on port 1
    batcher = ScriptBatcher(conn.client)
    script = conn.client.register_script(INCR_BY)
    results = await asyncio.gather(*(batcher.run(script, ["k", 1]) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, redis.exceptions.ConnectionError) for r in results)
    await batcher.close()
    await conn.close()

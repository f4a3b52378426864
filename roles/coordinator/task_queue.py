"""The durable task queue in Redis: priority order, leases, retries, dead letters, idempotency.

    <p>pending        ZSET task id -> score; lower runs first: (MAX_PRIORITY - priority) * 1e12 + seq
    <p>inflight       ZSET task id -> lease deadline (unix ms)
    <p>dead           ZSET task id -> time it was dead-lettered (unix ms)
    <p>task:<id>      HASH model, priority, score, state, attempts, worker, lease, epoch, created, error,
                      cache_key, ...
    <p>idem:<key>     STRING task id, so a retried submission is not queued twice
    <p>seq            arrival counter (FIFO within a priority)

One script admits a request (`admit`): it answers from the prompt cache when the cache shares
this Redis, and otherwise records the task and, when the leader has a worker free and nothing waits
ahead of it, leases it to that worker in the same script. One script ends it (`ack`), filling
the cache on the way. Scripts from concurrent requests share round trips (`ScriptBatcher`). Every script first checks the fencing epoch next to the data: a deposed
leader's writes are refused atomically (`FencedError`). States: queued -> leased -> done | queued
(retry) | dead; queued/leased -> cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cynode.errors import FencedError, QueueFullError
from cynode.redis_batch import ScriptBatcher
from cynode.redis_conn import RedisConnection, translate_errors

from .prompt_cache import FILL_LUA, LOOKUP_LUA, PromptCache

__all__ = ["MAX_PRIORITY", "Admission", "FencedError", "QueueFullError", "Task", "TaskQueue"]

MAX_PRIORITY = 1000  # priorities are clamped to [-MAX_PRIORITY, MAX_PRIORITY]
DONE_TTL_S = 3600  # finished task records stay this long, so late duplicates are recognised

_FENCE = """
local p = ARGV[1]
if redis.call('GET', p .. 'leader:epoch') ~= ARGV[2] then return {'fenced'} end
"""

# ARGV 3 id, 4 model, 5 priority, 6 idem, 7 max_size, 8 now, 9 cache key ('' = not cacheable),
# 10 worker ('' = none free), 11 lease, 12 lease deadline, 13 cache entry prefix ('' = no lookup), 14 lru.
_ADMIT = _FENCE + LOOKUP_LUA + """
local id, model, priority, idem, max_size, now = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]), ARGV[8]
local cache_key, worker = ARGV[9], ARGV[10]
if ARGV[13] ~= '' then
  local hit = cache_lookup(ARGV[13], ARGV[14], cache_key, now)
  if hit then return {'cached', hit} end
end
if idem ~= '' then
  local existing = redis.call('GET', p .. 'idem:' .. idem)
  if existing then return {'duplicate', existing} end
end
local depth = redis.call('ZCARD', p .. 'pending')
if depth >= max_size then return {'full', tostring(depth)} end
local seq = redis.call('INCR', p .. 'seq')
local score = (1000 - priority) * 1e12 + seq
local key = p .. 'task:' .. id
redis.call('HSET', key, 'model', model, 'priority', priority, 'score', score, 'attempts', 0, 'created', now,
  'idem', idem, 'cache_key', cache_key)
if idem ~= '' then redis.call('SET', p .. 'idem:' .. idem, id, 'EX', 86400) end
if worker ~= '' and depth == 0 then
  redis.call('HSET', key, 'state', 'leased', 'attempts', 1, 'worker', worker, 'lease', ARGV[11], 'epoch', ARGV[2])
  redis.call('ZADD', p .. 'inflight', ARGV[12], id)
  return {'leased', id}
end
redis.call('HSET', key, 'state', 'queued')
redis.call('ZADD', p .. 'pending', score, id)
return {'queued', id}
"""

_CLAIM = _FENCE + """
local id, worker, lease, deadline = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('ZREM', p .. 'pending', id) == 0 then return {'gone'} end
local key = p .. 'task:' .. id
local attempts = redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSET', key, 'state', 'leased', 'worker', worker, 'lease', lease, 'epoch', ARGV[2])
redis.call('ZADD', p .. 'inflight', deadline, id)
return {'leased', tostring(attempts)}
"""

_EXTEND = _FENCE + """
local id, lease, deadline = ARGV[3], ARGV[4], ARGV[5]
if redis.call('HGET', p .. 'task:' .. id, 'lease') ~= lease then return {'stale'} end
if not redis.call('ZSCORE', p .. 'inflight', id) then return {'stale'} end
redis.call('ZADD', p .. 'inflight', deadline, id)
return {'ok'}
"""

# Release a lease: success -> done (and the cache filled when a value is given and the cache lives
# here); failure -> back in the queue, or dead after max_retries attempts.
# ARGV 3 id, 4 lease ('*' = whichever), 5 ok, 6 max_retries, 7 now, 8 error, 9 cache value ('' = none),
# 10 cache entry prefix, 11 lru, 12 ttl ms, 13 max entries.
_RELEASE = _FENCE + FILL_LUA + """
local id, lease, ok, max_retries, now, err = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
local key = p .. 'task:' .. id
if lease ~= '*' and redis.call('HGET', key, 'lease') ~= lease then return {'stale'} end
if redis.call('ZREM', p .. 'inflight', id) == 0 then return {'stale'} end
if ok == '1' then
  redis.call('HSET', key, 'state', 'done', 'finished', now)
  redis.call('EXPIRE', key, %(done_ttl)d)
  local cache_key = redis.call('HGET', key, 'cache_key') or ''
  if cache_key ~= '' and ARGV[9] ~= '' and ARGV[10] ~= '' then
    cache_fill(ARGV[10], ARGV[11], cache_key, ARGV[9], ARGV[12], now, tonumber(ARGV[13]))
    return {'done', ''}
  end
  return {'done', cache_key}
end
redis.call('HSET', key, 'error', err)
if tonumber(redis.call('HGET', key, 'attempts')) >= max_retries then
  redis.call('HSET', key, 'state', 'dead', 'finished', now)
  redis.call('ZADD', p .. 'dead', now, id)
  return {'dead'}
end
redis.call('HSET', key, 'state', 'queued')
redis.call('ZADD', p .. 'pending', redis.call('HGET', key, 'score'), id)
return {'queued'}
""" % {"done_ttl": DONE_TTL_S}

_CANCEL = _FENCE + """
local id, reason = ARGV[3], ARGV[4]
local key = p .. 'task:' .. id
local removed = redis.call('ZREM', p .. 'pending', id) + redis.call('ZREM', p .. 'inflight', id)
if removed == 0 then return {'gone'} end
redis.call('HSET', key, 'state', 'cancelled', 'error', reason)
redis.call('EXPIRE', key, %(done_ttl)d)
return {'cancelled'}
""" % {"done_ttl": DONE_TTL_S}


@dataclass(frozen=True)
class Task:
    id: str
    model: str
    priority: int
    state: str
    attempts: int
    worker: str = ""
    lease: str = ""
    epoch: int = 0
    error: str = ""
    cache_key: str = ""


@dataclass(frozen=True, slots=True)
class Admission:
    """What `admit` did: "cached" (`cached` is the raw entry), "leased" (to the worker asked for),
    "queued" (waits for a worker) or "duplicate" (the idempotency key names task `task_id`)."""

    outcome: str
    task_id: str = ""
    cached: str = ""


class TaskQueue:
    def __init__(self, redis: RedisConnection, epoch: Callable[[], int], *, max_size: int, max_retries: int,
                 cache: PromptCache | None = None, clock: Callable[[], float] = time.time) -> None:
        """`cache`: the prompt cache, looked up and filled by the queue's scripts when it lives on
        this same Redis connection (otherwise the coordinator asks it separately)."""
        self._redis = redis
        self._p = redis.prefix
        self._epoch = epoch
        self.max_size = max_size
        self.max_retries = max_retries
        self._cache = cache if cache is not None and cache.redis is redis else None
        self._clock = clock
        client = redis.client
        self._admit = client.register_script(_ADMIT)
        self._claim = client.register_script(_CLAIM)
        self._extend = client.register_script(_EXTEND)
        self._release = client.register_script(_RELEASE)
        self._cancel = client.register_script(_CANCEL)
        self._batch = ScriptBatcher(client, redis)

    @property
    def serves_cache(self) -> bool:
        """Whether `admit` and `ack` look up and fill the prompt cache themselves."""
        return self._cache is not None

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _run(self, script, what: str, *args) -> list[str]:
        epoch = self._epoch()
        with translate_errors(what):
            reply = await self._batch.run(script, [self._p, epoch, *args])
        if reply[0] == "fenced":
            raise FencedError(f"{what} refused: epoch {epoch} is no longer the leader's")
        return reply

    async def admit(self, task_id: str, model: str, priority: int = 0, *, idempotency_key: str = "",
                    cache_key: str = "", look_up_cache: bool = False, worker: str = "", lease: str = "",
                    lease_ttl: float = 0.0) -> Admission:
        """Record a request, in one round trip (see the module docstring). With `worker` and `lease`
        it is leased at once when nothing is pending; `look_up_cache` answers a hit instead."""
        priority = max(-MAX_PRIORITY, min(MAX_PRIORITY, priority))
        probe = self._cache is not None and look_up_cache and bool(cache_key)
        reply = await self._run(
            self._admit, "admit", task_id, model, priority, idempotency_key, self.max_size, self._now_ms(), cache_key,
            worker, lease, self._now_ms() + int(lease_ttl * 1000),
            self._cache.entry_prefix if probe else "", self._cache.lru_key if probe else "",
        )
        if reply[0] == "full":
            raise QueueFullError(int(reply[1]))
        if reply[0] == "cached":
            return Admission("cached", cached=reply[1])
        return Admission(reply[0], task_id=reply[1])

    async def enqueue(self, task_id: str, model: str, priority: int = 0, *, idempotency_key: str = "") -> tuple[str, bool]:
        """Queue a task; returns (task id, created). A known idempotency key returns the first task's id."""
        admission = await self.admit(task_id, model, priority, idempotency_key=idempotency_key)
        return admission.task_id, admission.outcome == "queued"

    async def claim(self, task_id: str, worker: str, lease: str, lease_ttl: float) -> int | None:
        """Move a pending task into flight under `lease`; the attempt number, or None if it is gone."""
        reply = await self._run(self._claim, "claim", task_id, worker, lease, self._now_ms() + int(lease_ttl * 1000))
        return int(reply[1]) if reply[0] == "leased" else None

    async def extend(self, task_id: str, lease: str, lease_ttl: float) -> bool:
        reply = await self._run(self._extend, "lease extension", task_id, lease, self._now_ms() + int(lease_ttl * 1000))
        return reply[0] == "ok"

    async def ack(self, task_id: str, lease: str, cache_value: bytes | str = "") -> tuple[str, str]:
        """Finish a task: ("done" or "stale", cache key still to fill). Given `cache_value` and a cache
        on this Redis, the cache is filled in the same script and no key is left to fill."""
        fill = self._cache is not None and bool(cache_value)
        reply = await self._run(
            self._release, "ack", task_id, lease, "1", self.max_retries, self._now_ms(), "",
            cache_value if fill else "", self._cache.entry_prefix if fill else "", self._cache.lru_key if fill else "",
            self._cache.ttl_ms if fill else 0, self._cache.max_size if fill else 0,
        )
        return reply[0], (reply[1] if len(reply) > 1 else "")

    async def fail(self, task_id: str, lease: str, error: str) -> str:
        """'queued' (will be retried), 'dead' (dead-lettered) or 'stale' (not ours any more)."""
        return (await self._run(self._release, "fail", task_id, lease, "0", self.max_retries, self._now_ms(), error,
                                "", "", "", 0, 0))[0]

    async def cancel(self, task_id: str, reason: str = "cancelled") -> bool:
        return (await self._run(self._cancel, "cancel", task_id, reason))[0] == "cancelled"

    async def reap(self, limit: int = 100) -> list[tuple[str, str]]:
        """Requeue (or dead-letter) tasks whose lease deadline has passed: [(task id, new state)]."""
        with translate_errors("reap"):
            expired = await self._redis.client.zrangebyscore(self._p + "inflight", "-inf", self._now_ms(), start=0, num=limit)
        results = []
        for task_id in expired:
            state = (await self._run(self._release, "reap", task_id, "*", "0", self.max_retries, self._now_ms(),
                                     "lease expired", "", "", "", 0, 0))[0]
            if state != "stale":
                results.append((task_id, state))
        return results

    async def close(self) -> None:
        await self._batch.close()

    async def pending(self, limit: int = 1000) -> list[str]:
        """Pending task ids, in the order they will run."""
        with translate_errors("queue read"):
            return await self._redis.client.zrange(self._p + "pending", 0, limit - 1)

    async def inflight(self) -> list[str]:
        with translate_errors("queue read"):
            return await self._redis.client.zrange(self._p + "inflight", 0, -1)

    async def depths(self) -> dict[str, int]:
        with translate_errors("queue read"):
            pipe = self._redis.client.pipeline(transaction=False)
            for name in ("pending", "inflight", "dead"):
                pipe.zcard(self._p + name)
            pending, inflight, dead = await pipe.execute()
        return {"pending": pending, "inflight": inflight, "dead": dead}

    async def get(self, task_id: str) -> Task | None:
        with translate_errors("task read"):
            fields = await self._redis.client.hgetall(self._p + "task:" + task_id)
        if not fields:
            return None
        return Task(
            id=task_id, model=fields.get("model", ""), priority=int(fields.get("priority", 0)),
            state=fields.get("state", ""), attempts=int(fields.get("attempts", 0)), worker=fields.get("worker", ""),
            lease=fields.get("lease", ""), epoch=int(fields.get("epoch", 0) or 0), error=fields.get("error", ""),
            cache_key=fields.get("cache_key", ""),
        )

    async def get_many(self, task_ids: list[str]) -> list[Task | None]:
        return [await self.get(t) for t in task_ids]

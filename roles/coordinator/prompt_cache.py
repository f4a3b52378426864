"""The prompt cache in Redis: identical deterministic requests are answered without a worker.

Key: SHA-256 of the canonical request (model id, model/adapter version, messages, every sampling
parameter including the seed). A changed model or adapter version is a different key, so old
entries can never answer for the new weights; they age out by TTL or LRU.
Bounded: `<p>cache:lru` orders entries by last use; a put beyond `max_size` evicts the least
recently used in the same Lua script. Entries keep the streamed deltas, so a replay to a streaming
client has the original chunks.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from cynode.redis_conn import RedisConnection, translate_errors

_PUT = """
local entry, lru, key, value, ttl_ms, now, max_size = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
redis.call('SET', entry, value, 'PX', ttl_ms)
redis.call('ZADD', lru, now, key)
local excess = redis.call('ZCARD', lru) - max_size
if excess > 0 then
  local victims = redis.call('ZPOPMIN', lru, excess)
  for i = 1, #victims, 2 do redis.call('DEL', ARGV[6] .. victims[i]) end
end
return excess
"""

_GET = """
local value = redis.call('GET', KEYS[1])
if value then redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2]) else redis.call('ZREM', KEYS[2], ARGV[2]) end
return value
"""


@dataclass(frozen=True)
class CachedResponse:
    deltas: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str

    @property
    def text(self) -> str:
        return "".join(self.deltas)


def cache_key(model: str, version: str, messages: Sequence[tuple[str, str]], sampling: dict, adapter: str = "") -> str:
    """SHA-256 over a canonical JSON form; parameters left unset are dropped so defaults match."""
    canonical = {
        "model": model,
        "version": version,
        "adapter": adapter,
        "messages": [[role, content] for role, content in messages],
        "sampling": {k: v for k, v in sorted(sampling.items()) if v not in (None, [], ())},
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def is_deterministic(sampling: dict) -> bool:
    """Greedy, or sampled with a fixed seed: the same request gives the same answer."""
    temperature = sampling.get("temperature")
    return (temperature is not None and temperature <= 0) or sampling.get("seed") is not None


class PromptCache:
    def __init__(self, redis: RedisConnection, *, ttl: float, max_size: int, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._ttl_ms = int(ttl * 1000)
        self._max_size = max_size
        self._clock = clock
        self._lru = redis.key("cache", "lru")
        self._put = redis.client.register_script(_PUT)
        self._get = redis.client.register_script(_GET)
        self.hits = 0
        self.misses = 0

    def _entry(self, key: str) -> str:
        return self._redis.key("cache", "entry", key)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    async def get(self, key: str) -> CachedResponse | None:
        with translate_errors("cache lookup"):
            raw = await self._get(keys=[self._entry(key), self._lru], args=[int(self._clock() * 1000), key])
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        data = json.loads(raw)
        return CachedResponse(**{**data, "deltas": tuple(data["deltas"])})

    async def put(self, key: str, response: CachedResponse) -> int:
        """Store an entry; returns how many least-recently-used entries were evicted."""
        value = json.dumps({**asdict(response), "deltas": list(response.deltas)}, separators=(",", ":"))
        with translate_errors("cache fill"):
            return int(await self._put(
                keys=[self._entry(key), self._lru],
                args=[key, value, self._ttl_ms, int(self._clock() * 1000), self._max_size, self._entry("")],
            ))

    async def size(self) -> int:
        with translate_errors("cache size"):
            return await self._redis.client.zcard(self._lru)

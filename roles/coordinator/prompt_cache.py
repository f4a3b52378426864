"""The prompt cache in Redis: identical deterministic requests are answered without a worker.

Key: SHA-256 of the canonical request (model id, model/adapter version, messages, every sampling
parameter given, the seed included). A changed model or adapter version is a different key, so old
entries can never answer for the new weights; they age out by TTL or LRU.
Bounded: `<p>cache:lru` orders entries by last use; a fill beyond `max_size` evicts the least
recently used in the same Lua script. Entries keep the streamed deltas, so a replay to a streaming
client has the original chunks.

When the cache shares the task queue's Redis, the queue's admit and ack scripts look it up and fill
it in the same round trip (`probe_args`, `FILL_LUA`); on a Redis of its own it is asked separately.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from cynode.inference import ChatMessage
from cynode.redis_conn import RedisConnection, translate_errors
from cynode.sampling import SamplingParams

# Store `value` under `entry_prefix .. key` for `ttl_ms`, mark it used at `now` and evict the least
# recently used entries beyond `max_size`. Shared by the cache's own script and the queue's ack.
FILL_LUA = """
local function cache_fill(entry_prefix, lru, key, value, ttl_ms, now, max_size)
  redis.call('SET', entry_prefix .. key, value, 'PX', ttl_ms)
  redis.call('ZADD', lru, now, key)
  local excess = redis.call('ZCARD', lru) - max_size
  if excess > 0 then
    local victims = redis.call('ZPOPMIN', lru, excess)
    for i = 1, #victims, 2 do redis.call('DEL', entry_prefix .. victims[i]) end
  end
  return excess
end
"""

# Look `key` up and mark it used; a missing entry (expired) leaves the LRU set too.
LOOKUP_LUA = """
local function cache_lookup(entry_prefix, lru, key, now)
  local value = redis.call('GET', entry_prefix .. key)
  if value then redis.call('ZADD', lru, now, key) else redis.call('ZREM', lru, key) end
  return value
end
"""

_PUT = FILL_LUA + """
return cache_fill(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]))
"""

_GET = LOOKUP_LUA + """
return cache_lookup(ARGV[1], ARGV[2], ARGV[3], ARGV[4])
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

    def encode(self) -> bytes:
        return orjson.dumps({"deltas": self.deltas, "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
                             "completion_tokens": self.completion_tokens, "model": self.model})

    @classmethod
    def decode(cls, raw: str | bytes) -> CachedResponse:
        data = orjson.loads(raw)
        return cls(**{**data, "deltas": tuple(data["deltas"])})


def cache_key(model: str, version: str, messages: Sequence[ChatMessage], sampling: SamplingParams,
              adapter: str = "", prompt: str = "", tools: str = "") -> str:
    """SHA-256 over a canonical JSON form; parameters not given are left out, so defaults match.
    `prompt`: a raw completion prompt (`/v1/completions`), never equal to any chat's key. `tools`
    (the JSON of the functions offered) and the sampling's guide (response_format, a forced tool
    call) change the prompt or the grammar, so they are part of the key."""
    canonical = {
        "model": model,
        "version": version,
        "adapter": adapter,
        "messages": [_message(m) for m in messages],
        "sampling": sampling.given(),
    }
    if prompt:
        canonical["prompt"] = prompt
    if tools:
        canonical["tools"] = tools
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _message(m: ChatMessage) -> list:
    """[role, content], with the tool calls and the answered call's id only when there are any (so
    keys made before tools existed still match)."""
    if not (m.tool_calls or m.tool_call_id):
        return [m.role, m.content]
    return [m.role, m.content, [[c.id, c.name, c.arguments] for c in m.tool_calls], m.tool_call_id]


class PromptCache:
    def __init__(self, redis: RedisConnection, *, ttl: float, max_size: int, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl * 1000)
        self.max_size = max_size
        self._clock = clock
        self.lru_key = redis.key("cache", "lru")
        self.entry_prefix = redis.key("cache", "entry", "")
        self._put = redis.client.register_script(_PUT)
        self._get = redis.client.register_script(_GET)
        self.hits = 0
        self.misses = 0

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def counted(self, raw: str | bytes | None) -> CachedResponse | None:
        """Count a lookup's outcome (made here or by the queue's admit script) and decode a hit."""
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        return CachedResponse.decode(raw)

    async def get(self, key: str) -> CachedResponse | None:
        with translate_errors("cache lookup"):
            raw = await self._get(args=[self.entry_prefix, self.lru_key, key, self.now_ms()])
        return self.counted(raw)

    async def put(self, key: str, response: CachedResponse) -> int:
        """Store an entry; returns how many least-recently-used entries were evicted."""
        with translate_errors("cache fill"):
            return int(await self._put(args=[self.entry_prefix, self.lru_key, key, response.encode(), self.ttl_ms,
                                             self.now_ms(), self.max_size]))

    async def size(self) -> int:
        with translate_errors("cache size"):
            return await self.redis.client.zcard(self.lru_key)

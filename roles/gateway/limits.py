"""Per-key limits held by every gateway together, and usage per key per day, in Redis.

A key may set `requests_per_minute`, `tokens_per_minute`, `max_concurrent_requests`,
`tokens_per_day` and `tokens_per_month` (the API-key file, or a key made with `cynode keys
create`). One Lua script checks all of them and, only when every one has room, charges them, so N
gateways sharing a Redis admit no more than the limit between them and a refused request costs
nothing. Time is Redis's own (`TIME`), so the gateways' clocks do not matter.

    <p>limit:<key>:req:<minute>    requests admitted in that minute (the window counters expire)
    <p>limit:<key>:tok:<minute>    tokens charged in that minute
    <p>limit:<key>:conc            ZSET request id -> expiry (ms): requests in flight; a gateway that
                                   dies mid-request leaves entries that lapse after the request timeout
    <p>usage:<key>:<YYYYMMDD>      HASH requests, prompt_tokens, completion_tokens, total_tokens
    <p>usage:<key>:<YYYYMM>        the same for the month (the monthly budget reads total_tokens)

Rates are sliding windows: the previous minute's count weighs in by the part of it still inside
the last 60 s (the approximation Cloudflare and others use; it never admits more than the limit
within any window that starts at a minute boundary, and at most a little over within others).

Tokens are unknown before the answer, so admission reserves an estimate (prompt characters / 4
plus `max_tokens`, or `UNBOUNDED_COMPLETION_ESTIMATE` without it, capped at the limit so a big
request can still run alone) and the end of the request settles it with the real usage. Settling
is a second script sent off the response path, through the same `ScriptBatcher`, so concurrent
requests share round trips; a lone request pays one round trip before its first token, and a key
without limits pays none (its usage is still counted, at the end).

Why not the `limits` library: it charges one limit per call, so a request refused by its tokens
limit would already have used up a request of its rate, it cannot give back an over-estimate, and
four limits would cost four round trips.
"""

from __future__ import annotations

import calendar
import logging
import time
from dataclasses import dataclass, field

import redis.exceptions
from cynode.api_keys import ApiKey
from cynode.errors import RateLimitError, StartupError, UnavailableError
from cynode.redis_batch import ScriptBatcher
from cynode.redis_conn import RedisConnection, translate_errors
from cynode.tasks import BackgroundTasks

log = logging.getLogger(__name__)

__all__ = ["UNBOUNDED_COMPLETION_ESTIMATE", "Admission", "Limiter", "estimate_tokens", "format_reset"]

UNBOUNDED_COMPLETION_ESTIMATE = 256  # completion tokens reserved for a request without max_tokens
DAY_TTL_S = 100 * 86400  # usage per day is kept this long
MONTH_TTL_S = 400 * 86400

# ARGV 1 limit prefix, 2 usage prefix, 3 request id, 4 rpm, 5 tpm, 6 concurrency, 7 per day, 8 per month
# (0: no such limit), 9 token estimate, 10 in-flight lifetime ms, 11 day, 12 month, 13 s to the day's end,
# 14 s to the month's end.
# Reply: {'ok' | 'rpm' | 'tpm' | 'concurrency' | 'day' | 'month', retry after ms, minute, requests used,
#         tokens used, ms to the minute's end, tokens charged}
_ADMIT = """
local lp, up, id = ARGV[1], ARGV[2], ARGV[3]
local rpm, tpm, conc, tpd, tpmo = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local est, life = tonumber(ARGV[9]), tonumber(ARGV[10])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(now / 60000)
local frac = (now % 60000) / 60000
local to_end = 60000 - (now % 60000)
local function window(kind)
  local cur = tonumber(redis.call('GET', lp .. kind .. ':' .. minute) or '0')
  local prev = tonumber(redis.call('GET', lp .. kind .. ':' .. (minute - 1)) or '0')
  return cur, prev, prev * (1 - frac) + cur
end
-- ms until `cost` more fits under `limit`, given this minute's and the last minute's counts
local function wait(limit, cur, prev, cost)
  local room = limit - cur - cost
  if room >= 0 and prev > 0 then return math.ceil(((1 - room / prev) - frac) * 60000) end
  local g = 0
  if cur > 0 then g = math.max(0, 1 - (limit - cost) / cur) end
  return math.ceil(to_end + g * 60000)
end
local rcur, rprev, rused, tcur, tprev, tused = 0, 0, 0, 0, 0, 0
local tcost = est
if rpm > 0 then
  rcur, rprev, rused = window('req')
  if rused + 1 > rpm then return {'rpm', wait(rpm, rcur, rprev, 1), minute, math.floor(rused), 0, to_end, 0} end
end
if tpm > 0 then
  if tcost > tpm then tcost = tpm end
  tcur, tprev, tused = window('tok')
  if tused + tcost > tpm then
    return {'tpm', wait(tpm, tcur, tprev, tcost), minute, math.floor(rused), math.floor(tused), to_end, 0}
  end
end
local ckey = lp .. 'conc'
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', ckey, '-inf', now)
  if redis.call('ZCARD', ckey) >= conc then
    return {'concurrency', 1000, minute, math.floor(rused), math.floor(tused), to_end, 0}
  end
end
local dkey, mkey = up .. ARGV[11], up .. ARGV[12]
if tpd > 0 then
  local used = tonumber(redis.call('HGET', dkey, 'total_tokens') or '0')
  local cost = math.min(est, tpd)
  if used + cost > tpd then return {'day', tonumber(ARGV[13]) * 1000, minute, math.floor(rused), math.floor(tused), to_end, 0} end
end
if tpmo > 0 then
  local used = tonumber(redis.call('HGET', mkey, 'total_tokens') or '0')
  local cost = math.min(est, tpmo)
  if used + cost > tpmo then return {'month', tonumber(ARGV[14]) * 1000, minute, math.floor(rused), math.floor(tused), to_end, 0} end
end
if rpm > 0 then
  local k = lp .. 'req:' .. minute
  redis.call('INCR', k)
  redis.call('PEXPIRE', k, 130000)
end
if tpm > 0 then
  local k = lp .. 'tok:' .. minute
  redis.call('INCRBY', k, tcost)
  redis.call('PEXPIRE', k, 130000)
end
if conc > 0 then
  redis.call('ZADD', ckey, now + life, id)
  redis.call('PEXPIRE', ckey, life + 60000)
end
if tpd > 0 or tpmo > 0 then
  redis.call('HINCRBY', dkey, 'total_tokens', est)
  redis.call('EXPIRE', dkey, DAY_TTL)
  redis.call('HINCRBY', mkey, 'total_tokens', est)
  redis.call('EXPIRE', mkey, MONTH_TTL)
end
return {'ok', 0, minute, math.floor(rused) + 1, math.floor(tused + tcost), to_end, tcost}
""".replace("MONTH_TTL", str(MONTH_TTL_S)).replace("DAY_TTL", str(DAY_TTL_S))

# ARGV 1 limit prefix, 2 usage prefix, 3 request id, 4 minute the tokens were charged in (-1: none),
# 5 tokens charged there, 6 budget tokens reserved, 7 prompt tokens, 8 completion tokens, 9 day, 10 month,
# 11 1 when the request held a concurrency slot.
_SETTLE = """
local lp, up, id = ARGV[1], ARGV[2], ARGV[3]
local minute, charged, reserved = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local prompt, completion = tonumber(ARGV[7]), tonumber(ARGV[8])
local actual = prompt + completion
if ARGV[11] == '1' then redis.call('ZREM', lp .. 'conc', id) end
if minute >= 0 then
  local k = lp .. 'tok:' .. minute
  local left = redis.call('INCRBY', k, actual - charged)
  if left < 0 then redis.call('SET', k, 0, 'KEEPTTL') end
end
for _, k in ipairs({up .. ARGV[9], up .. ARGV[10]}) do
  redis.call('HINCRBY', k, 'requests', 1)
  redis.call('HINCRBY', k, 'prompt_tokens', prompt)
  redis.call('HINCRBY', k, 'completion_tokens', completion)
  redis.call('HINCRBY', k, 'total_tokens', actual - reserved)
end
redis.call('EXPIRE', up .. ARGV[9], DAY_TTL)
redis.call('EXPIRE', up .. ARGV[10], MONTH_TTL)
return 1
""".replace("MONTH_TTL", str(MONTH_TTL_S)).replace("DAY_TTL", str(DAY_TTL_S))

_MESSAGES = {
    "rpm": "Rate limit reached for API key {name!r}: {limit} requests per minute. Retry after {after}s.",
    "tpm": "Rate limit reached for API key {name!r}: {limit} tokens per minute (this request is estimated at "
           "{est} tokens; set max_tokens to make the estimate tighter). Retry after {after}s.",
    "concurrency": "API key {name!r} already has {limit} requests in flight (max_concurrent_requests). "
                   "Retry when one of them finishes.",
    "day": "API key {name!r} has used its budget of {limit} tokens for today (UTC).",
    "month": "API key {name!r} has used its budget of {limit} tokens for this month (UTC).",
}
_LIMIT_FIELD = {"rpm": "requests_per_minute", "tpm": "tokens_per_minute", "concurrency": "max_concurrent_requests",
                "day": "tokens_per_day", "month": "tokens_per_month"}


def estimate_tokens(prompt_chars: int, max_tokens: int | None) -> int:
    """Tokens reserved at admission: about 4 characters a token for the prompt, plus the answer."""
    return prompt_chars // 4 + 1 + (max_tokens if max_tokens is not None else UNBOUNDED_COMPLETION_ESTIMATE)


def format_reset(ms: float) -> str:
    """A duration as OpenAI writes it in `x-ratelimit-reset-*`: "850ms", "12s", "1m30s"."""
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds < 10 else f"{round(seconds)}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


_calendar_cache: tuple[int, tuple[str, str, int, int]] = (-1, ("", "", 0, 0))


def _calendar(now: float) -> tuple[str, str, int, int]:
    """UTC day and month names, and whole seconds to the end of each (worked out once a second)."""
    global _calendar_cache
    second = int(now)
    if _calendar_cache[0] != second:
        _calendar_cache = (second, _work_out_calendar(second))
    return _calendar_cache[1]


def _work_out_calendar(now: int) -> tuple[str, str, int, int]:
    t = time.gmtime(now)
    day_left = 86400 - (t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    month_end = calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))
    return time.strftime("%Y%m%d", t), time.strftime("%Y%m", t), day_left, max(1, int(month_end - now))


@dataclass
class Admission:
    """One admitted request's charges, given back or made exact by `settle` at its end."""

    limiter: Limiter
    key: ApiKey
    request_id: str
    day: str
    month: str
    minute: int = -1
    charged: int = 0  # tokens charged to the minute window
    reserved: int = 0  # tokens charged to the day and month budgets
    slot: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False

    def settle(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Record the real usage (off the response path); call once, whatever the outcome."""
        if self.settled:
            return
        self.settled = True
        self.limiter.settle(self, prompt_tokens, completion_tokens)


class Limiter:
    def __init__(self, redis: RedisConnection, *, request_timeout: float) -> None:
        self._redis = redis
        client = redis.client
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)
        self._batch = ScriptBatcher(client)
        self._tasks = BackgroundTasks("gateway-usage")
        self._lifetime_ms = int((request_timeout + 30) * 1000)
        self._lost, self._lost_said = 0, -60.0

    async def check(self) -> None:
        """Load the scripts now: a Redis that cannot run them is found at start-up, not on a request."""
        try:
            for script in (self._admit, self._settle):
                await self._redis.client.script_load(script.script)
        except redis.exceptions.RedisError as exc:
            raise StartupError(f"per-key limits need Redis scripting, and Redis refused it: {exc}") from exc

    def _prefixes(self, key: ApiKey) -> tuple[str, str]:
        return self._redis.key("limit", key.name) + ":", self._redis.key("usage", key.name) + ":"

    async def admit(self, key: ApiKey, request_id: str, estimate: int) -> Admission:
        """Charge the key's limits for one request, or raise RateLimitError (429) naming the one hit."""
        day, month, day_left, month_left = _calendar(time.time())
        admission = Admission(self, key, request_id, day, month)
        if not key.has_limits:
            return admission  # usage is counted at the end; nothing to check
        limit_prefix, usage_prefix = self._prefixes(key)
        args = [limit_prefix, usage_prefix, request_id, key.requests_per_minute or 0, key.tokens_per_minute or 0,
                key.max_concurrent_requests or 0, key.tokens_per_day or 0, key.tokens_per_month or 0, estimate,
                self._lifetime_ms, day, month, day_left, month_left]
        with translate_errors("the rate-limit check"):
            reply = await self._batch.run(self._admit, args)
        verdict, retry_ms, minute, requests_used, tokens_used, to_end = reply[0], *map(int, reply[1:6])
        admission.headers = self._headers(key, requests_used, tokens_used, to_end)
        if verdict != "ok":
            limit = getattr(key, _LIMIT_FIELD[verdict])
            after = max(1, -(-retry_ms // 1000))
            message = _MESSAGES[verdict].format(name=key.name, limit=limit, est=estimate, after=after)
            code = "insufficient_quota" if verdict in ("day", "month") else "rate_limit_exceeded"
            raise RateLimitError(message, retry_after=after, code=code, headers=admission.headers)
        admission.minute = minute if key.tokens_per_minute else -1
        admission.charged = int(reply[6])
        admission.reserved = estimate if (key.tokens_per_day or key.tokens_per_month) else 0
        admission.slot = key.max_concurrent_requests is not None
        return admission

    @staticmethod
    def _headers(key: ApiKey, requests_used: int, tokens_used: int, to_end_ms: int) -> dict[str, str]:
        headers = {}
        reset = format_reset(to_end_ms)
        if key.requests_per_minute:
            headers["x-ratelimit-limit-requests"] = str(key.requests_per_minute)
            headers["x-ratelimit-remaining-requests"] = str(max(0, key.requests_per_minute - requests_used))
            headers["x-ratelimit-reset-requests"] = reset
        if key.tokens_per_minute:
            headers["x-ratelimit-limit-tokens"] = str(key.tokens_per_minute)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, key.tokens_per_minute - tokens_used))
            headers["x-ratelimit-reset-tokens"] = reset
        return headers

    def settle(self, admission: Admission, prompt_tokens: int, completion_tokens: int) -> None:
        limit_prefix, usage_prefix = self._prefixes(admission.key)
        args = [limit_prefix, usage_prefix, admission.request_id, admission.minute, admission.charged,
                admission.reserved, int(prompt_tokens), int(completion_tokens), admission.day, admission.month,
                "1" if admission.slot else "0"]
        self._tasks.spawn(self._send_settle(args, admission.key.name), "settle")

    async def _send_settle(self, args: list, name: str) -> None:
        try:
            await self._batch.run(self._settle, args)
        except (redis.exceptions.RedisError, UnavailableError, OSError) as exc:
            # The in-flight slot lapses on its own; the usage of this one request is lost. Said
            # once a minute at most: with Redis away every request would say it.
            self._lost += 1
            now = time.monotonic()
            if now - self._lost_said >= 60:
                log.warning("usage of %d request(s) not recorded (API key %r and others): %s", self._lost, name, exc)
                self._lost, self._lost_said = 0, now

    async def wait(self, timeout: float = 5.0) -> None:
        """Every settle sent so far has been answered (for a drain, and for tests)."""
        await self._tasks.wait(timeout)

    async def close(self) -> None:
        await self._tasks.wait(1.0)  # settles take milliseconds; a Redis that is away costs no more
        await self._tasks.close()
        await self._batch.close()

    async def usage(self, name: str, days: list[str]) -> dict[str, dict[str, int]]:
        """The usage hashes of key `name` for these days (YYYYMMDD) or months (YYYYMM)."""
        pipe = self._redis.client.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(self._redis.key("usage", name, day))
        with translate_errors("reading usage"):
            replies = await pipe.execute()
        fields = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
        return {day: {f: int(reply.get(f, 0)) for f in fields} for day, reply in zip(days, replies)}

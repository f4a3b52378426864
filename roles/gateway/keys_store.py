"""API keys made at run time (`cynode keys create`, `POST /v1/admin/keys`), kept in Redis.

    <p>apikey:<sha256 hex>   STRING JSON: name, scopes, models, limits, priority, created, expires_at,
                             revoked (unix time or null), created_by
    <p>apikey-names          HASH name -> sha256 hex (names are unique; listing walks it)

Only the SHA-256 of a key is stored; the key itself is shown once, to whoever made it. A gateway
keeps what it looked up for `CACHE_S` seconds (unknown digests too), so a key costs one Redis
read per gateway every few seconds at most, never one per request: a revocation is in force at
once on the gateway that made it and within `CACHE_S` everywhere else.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from cynode.api_keys import LIMIT_FIELDS, SCOPES, ApiKey, generate_key
from cynode.errors import RequestError, UnavailableError
from cynode.redis_conn import RedisConnection, translate_errors

__all__ = ["CACHE_S", "KeyRecord", "RuntimeKeys", "parse_key_spec"]

CACHE_S = 2.0
CACHE_ENTRIES = 10_000

_CREATE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""


@dataclass
class KeyRecord:
    name: str
    scopes: list[str] = field(default_factory=lambda: ["inference"])
    models: list[str] = field(default_factory=lambda: ["*"])
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    priority: int | None = None
    created: float = 0.0
    expires_at: float | None = None
    revoked: float | None = None
    created_by: str = ""

    def api_key(self) -> ApiKey:
        return ApiKey(name=self.name, scopes=frozenset(self.scopes), models=tuple(self.models), priority=self.priority,
                      expires_at=self.expires_at, source="redis", **{f: getattr(self, f) for f in LIMIT_FIELDS})

    def public(self) -> dict[str, Any]:
        """What an admin sees: everything but the key, which is not kept."""
        return {**asdict(self), "source": "redis", "state": self.state()}

    def state(self, now: float | None = None) -> str:
        if self.revoked:
            return "revoked"
        if self.expires_at is not None and (now or time.time()) >= self.expires_at:
            return "expired"
        return "active"


def _positive_int(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"{name} must be a positive integer; got {value!r}", param=name, code="invalid_value")
    return value


def parse_key_spec(body: Any, *, now: float) -> KeyRecord:
    """A `POST /v1/admin/keys` body as a record; RequestError (400) naming the bad field."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object", code="invalid_request")
    known = {"name", "scopes", "models", "priority", "expires_in", "expires_at", *LIMIT_FIELDS}
    for name in body:
        if name not in known:
            raise RequestError(f"unknown field {name!r} (expected any of {', '.join(sorted(known))})", param=name,
                               code="unknown_parameter")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 128 or any(c.isspace() or c == ":" for c in name):
        raise RequestError("name is required: up to 128 characters, no spaces or colons", param="name",
                           code="invalid_value")
    record = KeyRecord(name=name, created=now)
    for list_field in ("scopes", "models"):
        if list_field in body:
            value = body[list_field]
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise RequestError(f"{list_field} must be a non-empty list of strings", param=list_field,
                                   code="invalid_value")
            setattr(record, list_field, list(value))
    for scope in record.scopes:
        if scope not in SCOPES:
            raise RequestError(f"unknown scope {scope!r} (expected any of {', '.join(SCOPES)})", param="scopes",
                               code="invalid_value")
    for limit in LIMIT_FIELDS:
        setattr(record, limit, _positive_int(body, limit))
    priority = body.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise RequestError(f"priority must be an integer; got {priority!r}", param="priority", code="invalid_value")
    record.priority = priority
    if "expires_in" in body and "expires_at" in body:
        raise RequestError("give expires_in or expires_at, not both", param="expires_in", code="invalid_value")
    if "expires_in" in body:
        seconds = _positive_int(body, "expires_in")
        record.expires_at = now + seconds if seconds else None
    elif body.get("expires_at") is not None:
        at = body["expires_at"]
        if isinstance(at, bool) or not isinstance(at, (int, float)) or at <= now:
            raise RequestError("expires_at must be a unix time in the future", param="expires_at", code="invalid_value")
        record.expires_at = float(at)
    return record


class RuntimeKeys:
    def __init__(self, redis: RedisConnection, clock=time.monotonic) -> None:
        self._redis = redis
        self._clock = clock
        self._names = redis.key("apikey-names")
        self._create = redis.client.register_script(_CREATE)
        # digest -> (when it was looked up, the ApiKey, or None for "no such key or revoked")
        self._cache: OrderedDict[str, tuple[float, ApiKey | None]] = OrderedDict()

    def _record_key(self, digest: str) -> str:
        return self._redis.key("apikey", digest)

    async def find(self, token: str) -> ApiKey | None:
        """The live key for `token` (None: unknown or revoked); expiry is the caller's to check."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < CACHE_S:
            return cached[1]
        try:
            with translate_errors("looking up an API key"):
                raw = await self._redis.client.get(self._record_key(digest))
        except UnavailableError:
            if cached is not None:  # Redis is away: a key known a moment ago stays known
                return cached[1]
            raise
        found = None
        if raw is not None:
            record = KeyRecord(**orjson.loads(raw))
            found = None if record.revoked else record.api_key()
        self._cache[digest] = (now, found)
        self._cache.move_to_end(digest)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return found

    async def create(self, record: KeyRecord) -> str:
        """Store a new key; returns the key itself (shown once). RequestError (409) for a name in use."""
        key = generate_key()
        digest = hashlib.sha256(key.encode()).hexdigest()
        with translate_errors("creating an API key"):
            made = await self._create(keys=[self._names, self._record_key(digest)],
                                      args=[record.name, digest, orjson.dumps(asdict(record))])
        if not made:
            raise RequestError(f"an API key named {record.name!r} already exists", status=409, param="name",
                               code="key_exists")
        return key

    async def get(self, name: str) -> KeyRecord | None:
        with translate_errors("reading an API key"):
            digest = await self._redis.client.hget(self._names, name)
            raw = await self._redis.client.get(self._record_key(digest)) if digest else None
        return KeyRecord(**orjson.loads(raw)) if raw else None

    async def list(self) -> list[KeyRecord]:
        with translate_errors("listing API keys"):
            names = await self._redis.client.hgetall(self._names)
            digests = sorted(names.items())
            raws = await self._redis.client.mget([self._record_key(d) for _, d in digests]) if digests else []
        return [KeyRecord(**orjson.loads(raw)) for raw in raws if raw]

    async def revoke(self, name: str, now: float) -> KeyRecord | None:
        """Mark the key revoked (kept, for the record); None when there is no such key."""
        with translate_errors("revoking an API key"):
            digest = await self._redis.client.hget(self._names, name)
            if not digest:
                return None
            raw = await self._redis.client.get(self._record_key(digest))
            if raw is None:
                return None
            record = KeyRecord(**orjson.loads(raw))
            if not record.revoked:
                record.revoked = now
                await self._redis.client.set(self._record_key(digest), orjson.dumps(asdict(record)))
        self._cache.pop(digest, None)
        return record

"""Assignment leases in Redis, fenced by the leader epoch.

A lease is written only if the epoch in Redis still equals the epoch of the leader writing it, in
the same Lua script, so a deposed leader that wakes up late cannot record assignments.
"""

from __future__ import annotations

import uuid

from cynode.leader_record import epoch_key
from cynode.redis_conn import RedisConnection, translate_errors

# Until issue 4's heartbeats extend leases, a lease outlives the longest completion it covers.
LEASE_TTL_S = 900

_WRITE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], 'epoch', ARGV[1], 'worker', ARGV[3], 'model', ARGV[4], 'request', ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

_RELEASE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return 0 end
return redis.call('DEL', KEYS[2])
"""


class LeaseStore:
    def __init__(self, redis: RedisConnection) -> None:
        self._redis = redis
        self._write = redis.client.register_script(_WRITE)
        self._release = redis.client.register_script(_RELEASE)

    def _key(self, lease_id: str) -> str:
        return self._redis.key("lease", lease_id)

    async def grant(self, *, epoch: int, worker_id: str, model: str, request_id: str) -> str | None:
        """A new lease id, or None when `epoch` is no longer the current one (we were deposed)."""
        lease_id = uuid.uuid4().hex
        with translate_errors("lease grant"):
            ok = await self._write(
                keys=[epoch_key(self._redis), self._key(lease_id)],
                args=[epoch, LEASE_TTL_S * 1000, worker_id, model, request_id],
            )
        return lease_id if ok else None

    async def release(self, *, epoch: int, lease_id: str) -> bool:
        with translate_errors("lease release"):
            return bool(await self._release(keys=[epoch_key(self._redis), self._key(lease_id)], args=[epoch]))

    async def get(self, lease_id: str) -> dict[str, str]:
        with translate_errors("lease lookup"):
            return await self._redis.client.hgetall(self._key(lease_id))

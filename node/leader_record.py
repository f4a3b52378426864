"""Where the coordinator leader is recorded in Redis, shared by the coordinator (writer) and the
gateway (reader) so the key layout lives in one place.

    <prefix>leader          the lock: "<node-id>:<boot-id>", PX ttl
    <prefix>leader:epoch    fencing epoch, INCR on every acquisition
    <prefix>leader:info     hash {holder, id, address, epoch} of the current holder
"""

from __future__ import annotations

from dataclasses import dataclass

from .redis_conn import RedisConnection, translate_errors


@dataclass(frozen=True)
class LeaderInfo:
    id: str
    address: str
    epoch: int


def lock_key(redis: RedisConnection) -> str:
    return redis.key("leader")


def epoch_key(redis: RedisConnection) -> str:
    return redis.key("leader", "epoch")


def info_key(redis: RedisConnection) -> str:
    return redis.key("leader", "info")


async def read_leader(redis: RedisConnection) -> LeaderInfo | None:
    """The current leader, or None when the lock is free or its record is from an older holder."""
    with translate_errors("leader lookup"):
        pipe = redis.client.pipeline(transaction=True)
        pipe.get(lock_key(redis))
        pipe.hgetall(info_key(redis))
        holder, info = await pipe.execute()
    if not holder or not info or info.get("holder") != holder:
        return None
    return LeaderInfo(id=info["id"], address=info["address"], epoch=int(info["epoch"]))

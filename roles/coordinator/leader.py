"""Leader election through a Redis lock with a fencing epoch (ARCHITECTURE section 5).

Acquire is one Lua script: SET NX PX on the lock, INCR of the epoch, and the holder's record.
The leader renews at a quarter of the TTL and stops acting two thirds of a TTL after the start of
its last confirmed renewal, even if Redis is unreachable: `is_leader` is computed from the last
confirmed renewal, not from hope. Redis lets the lock expire a full TTL after it, so a third of a
TTL separates the old leader's last act from the earliest moment another node can acquire; every
write also carries the epoch and is checked in Redis (fencing), which covers a leader paused for
longer than that (SIGSTOP, a VM stall).

How long a kill -9 of the leader takes to heal: the lock expires between 3/4 and 1 TTL after the
kill; standbys sleep until the lock's PTTL says it expires (never longer than a sixth of the TTL,
plus up to 100 ms of jitter so they don't stampede), so with the default 2 s TTL a standby leads
1.5-2.2 s after the kill. A scheduling stall that delays a renewal by less than 2/3 - 1/4 of the
TTL (830 ms by default) goes unnoticed; a longer one makes the leader stop acting until it renews:
under the same epoch while Redis still holds its lock, and once the lock has expired by acquiring
it again (a new epoch), if nobody else took it meanwhile.

With Sentinels (asynchronous replication) the acquisition counts only once `wait_replicas` replicas
have confirmed it (`RedisConnection.durable`: WAIT on the same connection). Sentinel promotes a
replica, so the promoted master holds every epoch a leader ever acted under, and the next INCR
there is above all of them: the fencing epoch never goes backwards across a failover. An
acquisition the replicas did not confirm is given back at once and tried again; that goes on while
the master has too few replicas (just after a Sentinel failover, until the other replicas have
resynchronised with the promoted master: seconds), so it is logged as a warning once per episode,
each retry at debug, and its end at info. A try that found the lock held by another node wrote
nothing, and what WAIT said about it does not matter.

Graceful shutdown resigns first (`resign`: stop competing, compare-and-delete the lock), so a
standby takes over within its poll interval, before the draining node has finished its streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

import redis.exceptions

from cynode.leader_record import epoch_key, info_key, lock_key
from cynode.redis_conn import NotReplicatedError, RedisConnection

log = logging.getLogger(__name__)

# A lock still holding our own value (we stopped acting after a stalled renewal, but nobody else took
# it) is taken back under a new epoch: nobody else can have led since, so that is safe.
_ACQUIRE = """
local mine = redis.call('GET', KEYS[1]) == ARGV[1]
if mine then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if mine or redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local epoch = redis.call('INCR', KEYS[2])
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[3], 'holder', ARGV[1], 'id', ARGV[3], 'address', ARGV[4], 'epoch', epoch)
  return epoch
end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""


class LeaderElection:
    def __init__(
        self,
        redis: RedisConnection,
        *,
        node_id: str,
        boot_id: str,
        address: str,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool, int], None] | None = None,
    ) -> None:
        self._redis = redis
        self._keys = [lock_key(redis), epoch_key(redis), info_key(redis)]
        self._holder = f"{node_id}:{boot_id}"
        self._node_id = node_id
        self._address = address
        self._ttl = ttl
        self._clock = clock
        self._on_change = on_change or (lambda leading, epoch: None)
        self._deadline = 0.0  # monotonic time until which we may act as leader
        self._hint = asyncio.Event()
        self._resigned = False
        self._resigned_event = asyncio.Event()
        self.epoch = 0
        self._acquire = redis.client.register_script(_ACQUIRE)
        self._renew = redis.client.register_script(_RENEW)
        self._release = redis.client.register_script(_RELEASE)
        self._unreplicated = 0  # acquisitions given back in a row for want of replicas

    @property
    def is_leader(self) -> bool:
        return self.epoch > 0 and self._clock() < self._deadline

    async def run(self) -> None:
        """Acquire, renew and re-acquire until cancelled."""
        was_leader = False
        while not self._resigned:
            started = self._clock()
            try:
                # A Redis that hangs must not hold us past our own deadline.
                async with asyncio.timeout(self._ttl / 3):
                    await self._try_lock(was_leader, started)
            except (redis.exceptions.RedisError, TimeoutError) as exc:
                log.warning("leader election: Redis error: %s", exc or "timed out")
            leading = self.is_leader
            if leading != was_leader:
                log.info("%s leader (epoch %d)", "became" if leading else "no longer", self.epoch)
                self._on_change(leading, self.epoch)
                was_leader = leading
            if leading:
                # Renew at a quarter of the TTL: a stall or a lost renewal shorter than 2/3 - 1/4 of
                # the TTL passes without a hand-over.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.05, self._ttl / 4 - (self._clock() - started))):
                        await self._resigned_event.wait()
            else:
                self._hint.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(await self._standby_pause()):
                        await self._hint.wait()

    def hint(self) -> None:
        """Gossip thinks a coordinator went away: a standby looks at the lock now. Redis still decides."""
        self._hint.set()

    async def _try_lock(self, was_leader: bool, started: float) -> None:
        if self._resigned:
            return
        if was_leader:
            if await self._renew(keys=self._keys[:1], args=[self._holder, int(self._ttl * 1000)]):
                self._deadline = started + self._ttl * 2 / 3  # act only well inside the TTL
            else:
                log.warning("leader lock lost (epoch %d): another node holds it", self.epoch)
                self._deadline = 0.0
            return
        epoch = await self._acquire_durably()
        if epoch:
            self.epoch = epoch
            self._deadline = started + self._ttl * 2 / 3
            if self._resigned:  # resign() ran while this acquire was on its way: give it back at once
                await self.release()

    async def _acquire_durably(self) -> int:
        """The new epoch (0: someone else holds the lock); with `wait_replicas`, only once replicas hold it."""
        args = [self._holder, int(self._ttl * 1000), self._node_id, self._address]
        if not self._redis.wait_replicas:
            return int(await self._acquire(keys=self._keys, args=args))
        try:
            reply, = await self._redis.durable(lambda pipe: (pipe.scripts.add(self._acquire),
                                                             pipe.evalsha(self._acquire.sha, len(self._keys), *self._keys, *args)))
        except NotReplicatedError as exc:
            if exc.replies and not isinstance(exc.replies[-1], Exception) and not int(exc.replies[-1]):
                return 0  # held by another node: nothing was written, so nothing to replicate
            self._unreplicated += 1
            (log.warning if self._unreplicated == 1 else log.debug)(
                "leader lock not taken: %s; giving it back (retrying; logged once until it succeeds)", exc)
            await self._release(keys=[self._keys[0], self._keys[2]], args=[self._holder])
            return 0
        if isinstance(reply, Exception):
            raise reply
        if self._unreplicated:
            log.info("replicas confirm writes again (after %d acquisition(s) given back)", self._unreplicated)
            self._unreplicated = 0
        return int(reply)

    async def _standby_pause(self) -> float:
        """Sleep until the lock should expire, but never longer than a sixth of the TTL or half a
        second (a released lock is noticed fast: graceful hand-over), with jitter so standbys don't
        stampede."""
        try:
            async with asyncio.timeout(1.0):
                remaining_ms = await self._redis.client.pttl(self._keys[0])
        except (redis.exceptions.RedisError, TimeoutError):
            remaining_ms = -1
        cap = min(self._ttl / 6, 0.5)
        if remaining_ms == -2:  # freed since our try: go again almost at once
            return random.uniform(0.01, 0.05)
        pause = min(remaining_ms / 1000, cap) if remaining_ms > 0 else cap
        return max(0.02, pause) + random.uniform(0, 0.1)

    async def resign(self) -> None:
        """Stop competing for the lock and release it if we hold it (graceful shutdown): a standby
        takes over within its poll interval. `run` returns at its next turn."""
        self._resigned = True
        self._resigned_event.set()
        self._hint.set()
        await self.release()

    async def release(self) -> None:
        if self.epoch and self._deadline:
            self._deadline = 0.0
            try:
                await self._release(keys=[self._keys[0], self._keys[2]], args=[self._holder])
                log.info("released leadership (epoch %d)", self.epoch)
            except redis.exceptions.RedisError as exc:
                log.warning("could not release the leader lock: %s", exc)

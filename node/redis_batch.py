"""Lua scripts for many concurrent callers in as few Redis round trips as the load allows.

Every admitted request costs the leader two scripts (admit, ack). Sent one by one, each is a
write and a read on its own connection; under load most of that is system calls and the event
loop's bookkeeping, not Redis. `ScriptBatcher` is a group commit: a script asked for while no
round trip is in flight goes at once, alone, from the caller's own task, so a lone request waits
for nothing; scripts asked for while one is in flight wait for it and then go together, in one
pipeline (one write, one read). Each caller gets its own script's reply or error; Redis runs every
script atomically either way.

Given a connection with `wait_replicas` (Sentinel mode), every round trip, a lone script's too, is
a pipeline ending in `WAIT` (`RedisConnection.durable`): a caller's reply means its write is on
the replicas as well, and `NotReplicatedError` (a time-out) when it is not.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.exceptions
from redis.commands.core import AsyncScript

from .tasks import BackgroundTasks

__all__ = ["ScriptBatcher"]


class ScriptBatcher:
    def __init__(self, client, connection=None) -> None:
        """`connection`: the `RedisConnection` of `client`, whose `wait_replicas` every round trip honours."""
        self._client = client
        self._durable = connection.durable if connection is not None and connection.wait_replicas else None
        self._queue: list[tuple[AsyncScript, list[Any], asyncio.Future]] = []
        self._flushing = False
        self._tasks = BackgroundTasks("redis-batch")
        self.round_trips = 0  # pipelines sent (for tests and benchmarks)

    async def run(self, script: AsyncScript, args: list[Any]) -> Any:
        """The script's reply, raising what Redis or the connection raised."""
        if self._flushing:
            future = asyncio.get_running_loop().create_future()
            self._queue.append((script, args, future))
            return await future
        self._flushing = True
        try:
            self.round_trips += 1
            if self._durable is not None:
                reply = (await self._replies([(script, args, None)]))[0]
                if isinstance(reply, Exception):
                    raise reply
                return reply
            return await script(args=args)  # redis-py loads the script if Redis lost it
        finally:
            if self._queue:
                self._tasks.spawn(self._flush(), "flush")  # it clears _flushing when the queue is empty
            else:
                self._flushing = False

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
        finally:
            self._flushing = False
            for _, _, future in self._queue:  # only if we were cancelled mid-way
                if not future.done():
                    future.set_exception(redis.exceptions.ConnectionError("the Redis batch was stopped"))

    async def _send(self, batch: list[tuple[AsyncScript, list[Any], asyncio.Future]]) -> None:
        self.round_trips += 1
        try:
            replies = await self._replies(batch)
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else redis.exceptions.ConnectionError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), reply in zip(batch, replies):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _replies(self, batch) -> list[Any]:
        """One reply (or error) per script, loading the scripts Redis lost (a restart, a failover to a
        replica that never saw SCRIPT LOAD, SCRIPT FLUSH) and sending those again."""
        replies = await self._pipeline(batch)
        missing = [i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)]
        if missing:
            for script in {batch[i][0] for i in missing}:
                await self._client.script_load(script.script)
            again = await self._pipeline([batch[i] for i in missing])
            for i, reply in zip(missing, again):
                replies[i] = reply
        return replies

    async def _pipeline(self, batch) -> list[Any]:
        def queue(pipe) -> None:
            for script, args, _ in batch:
                pipe.evalsha(script.sha, 0, *args)
        if self._durable is not None:
            return await self._durable(queue)
        pipe = self._client.pipeline(transaction=False)
        queue(pipe)
        return await pipe.execute(raise_on_error=False)

    async def close(self) -> None:
        await self._tasks.close()

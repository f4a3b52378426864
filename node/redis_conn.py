"""The one Redis connection layer, built from `[redis]` (`cynode.redis_tls.open_redis`).

Keys are namespaced by cluster name (`cynode:<cluster>:...`) so two clusters can share a Redis.
redis-py errors are translated to `UnavailableError` here, at the boundary, by `translate_errors`.

With `sentinels` the client is redis-py's Sentinel-managed one: every new connection asks the
Sentinels where the master is, and a connection that finds the old master gone (or demoted to a
read-only replica) is dropped and made again. Replication is asynchronous, so the writes that
matter wait for `wait_replicas` replicas (`WAIT`, see `durable`) on the same connection; see
docs/chaos.md for exactly what that guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.sentinel import Sentinel

from .errors import StartupError, UnavailableError

log = logging.getLogger(__name__)

try:
    import hiredis
except ImportError:  # redis-py's own packer then
    hiredis = None


class _HiredisPacking(aioredis.Connection):
    """Commands packed by hiredis in C rather than by redis-py in Python: about 20 µs less per
    command, and every admitted request sends two."""

    def pack_command(self, *args) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:  # "SCRIPT LOAD": Redis wants the words apart
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


class NotReplicatedError(redis.exceptions.TimeoutError):
    """A write reached the master but not `wait_replicas` replicas in time: a failover could lose it.
    `replies`: what the commands before the WAIT answered (errors as values)."""

    def __init__(self, message: str, replies: list[Any] | None = None) -> None:
        super().__init__(message)
        self.replies = replies or []


class RedisConnection:
    def __init__(self, url: str, cluster: str, options: dict | None = None, *, sentinels: Sequence[tuple[str, int]] = (),
                 master_name: str = "", wait_replicas: int = 0, wait_timeout: float = 0.5) -> None:
        """`options`: more connection options (TLS files, ACL user and password: `cynode.redis_tls`).
        `sentinels` and `master_name`: find the master through Redis Sentinel (`url` then gives only
        the scheme, database, user and password). `wait_replicas`: see `durable`."""
        self.url = url
        self.prefix = f"cynode:{cluster}:"
        self.master_name = master_name
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = max(1, int(wait_timeout * 1000))
        self.sentinel: Sentinel | None = None
        # No socket_timeout: redis-py applies it with asyncio.wait_for, which on Python 3.11 can
        # turn a cancelled command into a busy loop. Callers bound their waits with asyncio.timeout.
        common = {"decode_responses": True, "socket_connect_timeout": 2.0, "health_check_interval": 15}
        if sentinels:
            self.client: aioredis.Redis = self._via_sentinels(list(sentinels), common, options or {})
            return
        fast = {"connection_class": _HiredisPacking} if hiredis is not None and url.startswith("redis://") else {}
        self.client = aioredis.Redis.from_url(url, **common, **fast, **(options or {}))

    def _via_sentinels(self, sentinels: list[tuple[str, int]], common: dict, options: dict) -> aioredis.Redis:
        parts = urlsplit(self.url)
        master = {**common, "db": int(parts.path.lstrip("/") or 0), **options}
        if parts.username and "username" not in master:
            master["username"] = unquote(parts.username)
        if parts.password and "password" not in master:
            master["password"] = unquote(parts.password)
        if parts.scheme == "rediss":
            master["ssl"] = True
        # The Sentinels themselves: a short connect time-out, so a dead one is skipped quickly.
        self.sentinel = Sentinel(sentinels, sentinel_kwargs={"socket_connect_timeout": 0.5, "decode_responses": True})
        return self.sentinel.master_for(self.master_name, **master)

    @property
    def where(self) -> str:
        """What this connection talks to, for logs and errors (no password)."""
        if self.sentinel is not None:
            sentinels = ", ".join(f"{h}:{p}" for h, p in ((s.connection_pool.connection_kwargs.get("host"),
                                                             s.connection_pool.connection_kwargs.get("port"))
                                                            for s in self.sentinel.sentinels))
            return f"master {self.master_name!r} through Sentinels {sentinels}"
        return safe_url(self.url)

    async def durable(self, queue: Callable[[Any], None]) -> list[Any]:
        """Run the commands `queue(pipeline)` adds in one round trip and, with `wait_replicas`, a
        `WAIT` after them on the same connection; raises `NotReplicatedError` when fewer replicas
        confirmed in time. Replies are the queued commands' (errors as values, not raised)."""
        pipe = self.client.pipeline(transaction=False)
        queue(pipe)
        if not self.wait_replicas:
            return await pipe.execute(raise_on_error=False)
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        *replies, acked = await pipe.execute(raise_on_error=False)
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < self.wait_replicas:
            raise NotReplicatedError(f"{acked} of {self.wait_replicas} replica(s) confirmed the write within "
                                     f"{self.wait_timeout_ms} ms ([redis] wait_replicas)", replies)
        return replies

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def connect(self, wait: float = 10.0) -> None:
        """Wait up to `wait` seconds for Redis to answer PING; a clear StartupError if it never does."""
        last: Exception | None = None
        deadline = asyncio.get_running_loop().time() + wait
        while asyncio.get_running_loop().time() < deadline:
            try:
                await self.client.ping()
                return
            except redis.exceptions.RedisError as exc:
                last = exc
                await asyncio.sleep(0.25)
        if self.sentinel is not None:
            raise StartupError(f"Redis {self.where} does not answer ({last}); check [redis] sentinels and master_name")
        raise StartupError(
            f"Redis at {safe_url(self.url)} does not answer ({last}); start it, fix [redis] url, "
            "or set [redis] embedded = true to let cynode run its own"
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()
        for sentinel in self.sentinel.sentinels if self.sentinel is not None else ():
            with contextlib.suppress(Exception):
                await sentinel.aclose()


# Redis refusing writes for a while, not a bug in the command: a full disk under its data dir
# (MISCONF: the AOF or RDB write failed), maxmemory reached (OOM), no replicas (NOREPLICAS), a
# demoted master (READONLY). Each heals without cynode doing anything: retry later.
_REFUSALS = {
    "MISCONF": "Redis cannot persist writes (is the disk under its data dir full?)",
    "OOM": "Redis is out of memory (maxmemory)",
    "NOREPLICAS": "Redis has too few replicas for writes (min-replicas-to-write)",
    "READONLY": "Redis is a read-only replica (a failover in progress?)",
}


def refusal(exc: BaseException) -> str | None:
    """What a Redis error reply that means "not now" says, or None for any other error."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):  # redis-py strips these prefixes
        return f"{_REFUSALS['OOM']}: {exc}"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return f"{_REFUSALS['READONLY']}: {exc}"
    if isinstance(exc, redis.exceptions.ResponseError):
        word = str(exc).split(" ", 1)[0]
        if word in _REFUSALS:
            return f"{_REFUSALS[word]}: {exc}"
    return None


@contextlib.contextmanager
def translate_errors(what: str):
    """Turn redis-py failures into UnavailableError naming the operation."""
    try:
        yield
    except redis.exceptions.ResponseError as exc:
        reason = refusal(exc)
        if reason is None:
            raise
        raise UnavailableError(f"{reason} during {what}", retry_after=2.0) from exc
    except redis.exceptions.ConnectionError as exc:
        raise UnavailableError(f"Redis unreachable during {what}: {exc}", retry_after=1.0) from exc
    except redis.exceptions.TimeoutError as exc:
        raise UnavailableError(f"Redis timed out during {what}{f': {exc}' if str(exc) else ''}", retry_after=1.0) from exc


def safe_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


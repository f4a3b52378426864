"""The one Redis connection layer, built from `[redis]`.

Keys are namespaced by cluster name (`cynode:<cluster>:...`) so two clusters can share a Redis.
redis-py errors are translated to `UnavailableError` here, at the boundary, by `translate_errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
import redis.exceptions

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


class RedisConnection:
    def __init__(self, url: str, cluster: str, options: dict | None = None) -> None:
        """`options`: more connection options (TLS files, ACL user and password: `cynode.redis_tls`)."""
        self.url = url
        self.prefix = f"cynode:{cluster}:"
        # No socket_timeout: redis-py applies it with asyncio.wait_for, which on Python 3.11 can
        # turn a cancelled command into a busy loop. Callers bound their waits with asyncio.timeout.
        fast = {"connection_class": _HiredisPacking} if hiredis is not None and url.startswith("redis://") else {}
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2.0,
            health_check_interval=15,
            **fast,
            **(options or {}),
        )

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
        raise StartupError(
            f"Redis at {safe_url(self.url)} does not answer ({last}); start it, fix [redis] url, "
            "or set [redis] embedded = true to let cynode run its own"
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


@contextlib.contextmanager
def translate_errors(what: str):
    """Turn redis-py failures into UnavailableError naming the operation."""
    try:
        yield
    except redis.exceptions.ConnectionError as exc:
        raise UnavailableError(f"Redis unreachable during {what}: {exc}", retry_after=1.0) from exc
    except redis.exceptions.TimeoutError as exc:
        raise UnavailableError(f"Redis timed out during {what}", retry_after=1.0) from exc


def safe_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


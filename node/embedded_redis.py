"""A redis-server the daemon starts and supervises (`[redis] embedded = true`).

Loopback only, persistence on (AOF, fsync every second, plus RDB snapshots), data under
`<data_dir>/redis`. The server dies with the daemon (PR_SET_PDEATHSIG), so a killed daemon never
leaves an orphan holding the port. If it exits on its own it is restarted with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import signal
from pathlib import Path
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .errors import StartupError
from .tasks import BackgroundTasks

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    def __init__(self, url: str, data_dir: Path) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.url = url
        self.dir = data_dir / "redis"
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks = BackgroundTasks("embedded-redis")
        self._stopping = False

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StartupError(
                "[redis] embedded = true but redis-server is not installed "
                "(apt-get install redis-server), or set embedded = false and point [redis] url at a server"
            )
        if await self._answers():
            raise StartupError(
                f"[redis] embedded = true but something already answers on {self.host}:{self.port}; "
                "pick another port in [redis] url or set embedded = false to use that server"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self._binary = binary
        await self._spawn()
        self._tasks.spawn(self._supervise(), "supervisor")

    async def _spawn(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            self._binary,
            "--bind", self.host, "--port", str(self.port), "--protected-mode", "yes",
            "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "3600 1 300 100 60 10000", "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        for _ in range(100):
            if self._proc.returncode is not None:
                raise StartupError(
                    f"embedded redis-server exited with code {self._proc.returncode}; see {self.dir / 'redis.log'}"
                )
            if await self._answers():
                log.info("embedded redis-server up on %s:%d (data in %s)", self.host, self.port, self.dir)
                return
            await asyncio.sleep(0.1)
        raise StartupError(f"embedded redis-server did not answer within 10s; see {self.dir / 'redis.log'}")

    async def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping:
            code = await self._proc.wait()
            if self._stopping:
                return
            log.error("embedded redis-server exited with code %s; restarting in %.1fs", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            try:
                await self._spawn()
                backoff = 0.5
            except StartupError as exc:
                log.error("%s", exc)

    async def _answers(self) -> bool:
        # No client-side retries: this is a probe, and redis-py's default backoff would add seconds.
        client = aioredis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.3, socket_timeout=0.5,
                                retry=Retry(NoBackoff(), 0))
        try:
            return bool(await client.ping())
        except Exception:
            return False
        finally:
            await client.aclose()

    async def stop(self) -> None:
        self._stopping = True
        await self._tasks.close()
        proc = self._proc
        if proc and proc.returncode is None:
            proc.terminate()  # redis saves and fsyncs on SIGTERM
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()

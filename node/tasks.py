"""Background work a component owns: named, logged when it fails, and stopped with its owner.

No fire-and-forget tasks in cynode: every background loop and every piece of work sent off the
request path (a completion report, closing a stream) is spawned here, so a crash is logged instead
of vanishing with the task, and shutdown can wait for the work (`wait`) or cancel it (`close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["BackgroundTasks"]


class BackgroundTasks:
    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._log = logging.getLogger(f"cynode.{owner}")
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.error("%s crashed", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self, timeout: float) -> None:
        """Let the current tasks finish, up to `timeout` seconds (loops never do: use `close`)."""
        pending = set(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def close(self) -> None:
        """Cancel every task and wait until each has stopped."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

"""Run a training job in a spawned child process and follow it from asyncio.

    runner = TrainingRunner(spec)          # a JobSpec or its dict
    await runner.start()
    async for event in runner.events():    # ends after the one terminal event
        ...
    await runner.cancel() / pause() / checkpoint_now()   # from any task, any time
    await runner.kill()                    # SIGKILL; reported as failed/child_died

The child is spawned (never forked: the daemon holds threads, gRPC and an event loop, none of which
survive a fork) and imports torch itself, so the parent stays free of heavy imports. Events arrive
through a pipe watched with `loop.add_reader`, so nothing blocks the event loop. A child that dies
without a terminal event (kill -9, OOM killer, segfault) is reported as `failed` with code
`child_died` and its exit status. Running the same spec again resumes from the output folder's last
checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

from cynode.errors import TrainingError

from . import events as ev
from .child import child_main
from .spec import JobSpec

log = logging.getLogger(__name__)


class TrainingRunner:
    def __init__(self, spec: JobSpec | dict[str, Any]) -> None:
        self.spec = spec if isinstance(spec, JobSpec) else JobSpec.from_dict(spec)
        self._process: Any = None
        self._events_conn: Any = None
        self._commands_conn: Any = None
        self._queue: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._exited: asyncio.Event = asyncio.Event()
        self._eof = False
        self._terminal: ev.Event | None = None
        self._delivered_terminal = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_step = 0
        self._reaper: asyncio.Future | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def exitcode(self) -> int | None:
        return self._process.exitcode if self._process is not None else None

    @property
    def terminal(self) -> ev.Event | None:
        """The terminal event once it has arrived (or been made up for a dead child)."""
        return self._terminal

    async def start(self) -> None:
        if self._process is not None:
            raise TrainingError(f"job {self.spec.job_id}: the runner was already started", code="invalid_job")
        self._loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("spawn")
        events_recv, events_send = ctx.Pipe(duplex=False)
        commands_recv, commands_send = ctx.Pipe(duplex=False)
        # daemon: an exiting parent SIGTERMs the child, which checkpoints and stops (pause) rather than
        # training on as an orphan.
        process = ctx.Process(target=child_main, args=(self.spec.to_dict(), events_send, commands_recv),
                              name=f"cynode-train-{self.spec.job_id}", daemon=True)
        process.start()
        events_send.close()  # only the child writes events: EOF then means the child is gone
        commands_recv.close()
        self._process, self._events_conn, self._commands_conn = process, events_recv, commands_send
        self._loop.add_reader(events_recv.fileno(), self._on_events_readable)
        self._loop.add_reader(process.sentinel, self._on_exit)
        log.info("training job %s started in process %d", self.spec.job_id, process.pid)

    async def events(self) -> AsyncIterator[ev.Event]:
        """Every event in order, ending with the terminal one; a second call yields nothing more."""
        while not self._delivered_terminal:
            event = await self._queue.get()
            if event.terminal:
                self._delivered_terminal = True
            yield event

    async def wait(self) -> ev.Event:
        """Drain the events and return the terminal one."""
        async for _ in self.events():
            pass
        assert self._terminal is not None
        await self._exited.wait()
        return self._terminal

    async def cancel(self) -> None:
        self._send("cancel")

    async def pause(self) -> None:
        self._send("pause")

    async def checkpoint_now(self) -> None:
        self._send("checkpoint")

    async def kill(self) -> None:
        """SIGKILL the child: no checkpoint, no cleanup (what a crash looks like)."""
        if self._process is not None and self._process.exitcode is None:
            os.kill(self._process.pid, signal.SIGKILL)

    async def close(self, timeout: float = 30.0) -> None:
        """Stop following: ask a running child to pause, wait up to `timeout`, then kill it."""
        if self._process is None:
            return
        if self._process.exitcode is None:
            self._send("pause")
            try:
                async with asyncio.timeout(timeout):
                    await self._exited.wait()
            except TimeoutError:
                await self.kill()
                await self._exited.wait()
        self._release()

    async def __aenter__(self) -> TrainingRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- plumbing ------------------------------------------------------------------------------

    def _send(self, command: str) -> None:
        if self._commands_conn is None or self._terminal is not None:
            return
        try:
            self._commands_conn.send_bytes(json.dumps({"command": command}).encode())
        except (BrokenPipeError, OSError):
            pass  # the child is already gone; its end is reported through the event pipe

    def _on_events_readable(self) -> None:
        conn = self._events_conn
        try:
            while conn.poll():
                data = conn.recv_bytes()
                try:
                    event = ev.event_from_dict(json.loads(data))
                except (ValueError, TypeError) as exc:
                    log.error("job %s: unreadable event from the child: %s", self.spec.job_id, exc)
                    continue
                self._accept(event)
        except (EOFError, OSError):
            self._eof = True
            assert self._loop is not None
            self._loop.remove_reader(conn.fileno())
            self._maybe_report_death()

    def _on_exit(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self._process.sentinel)
        # The sentinel closes while the child exits, a moment before the kernel lets it be reaped, so
        # the (short) blocking join runs in a thread; its future is kept, never fire-and-forget.
        self._reaper = self._loop.run_in_executor(None, self._process.join)
        self._reaper.add_done_callback(self._on_reaped)

    def _on_reaped(self, _future: asyncio.Future) -> None:
        self._exited.set()
        self._maybe_report_death()

    def _accept(self, event: ev.Event) -> None:
        if self._terminal is not None:
            return
        if event.terminal:
            self._terminal = event
        self._last_step = getattr(event, "step", self._last_step)
        self._queue.put_nowait(event)

    def _maybe_report_death(self) -> None:
        """Once the pipe is at EOF and the process is reaped, a missing terminal event means it died."""
        if not (self._eof and self._exited.is_set()) or self._terminal is not None:
            return
        code = self._process.exitcode
        how = f"was killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else \
            f"exited with status {code}"
        self._accept(ev.Failed(
            job_id=self.spec.job_id, code="child_died", message=f"the training process {self._process.pid} "
            f"{how} before the job ended; run it again to resume from its last checkpoint",
            step=self._last_step, error={"exitcode": code, "pid": self._process.pid},
        ))

    def _release(self) -> None:
        for conn in (self._events_conn, self._commands_conn):
            if conn is not None:
                if conn is self._events_conn and not self._eof and self._loop is not None:
                    self._loop.remove_reader(conn.fileno())
                    self._eof = True
                conn.close()
        self._events_conn = self._commands_conn = None

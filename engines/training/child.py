"""The training child process: runs one job and talks to its parent over two pipes.

Events go up as one JSON object per message; commands come down as `{"command": "cancel" | "pause"
| "checkpoint"}`. A reader thread turns commands into `TrainerControl` requests. When the parent
goes away (its end of the command pipe closes) or SIGTERM arrives (systemd stopping the daemon),
the child pauses: it checkpoints at the next step boundary and exits, so the job can resume.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from typing import Any

COMMANDS = ("cancel", "pause", "checkpoint")


def child_main(spec_data: dict[str, Any], events_conn: Any, commands_conn: Any) -> None:
    """Entry point of the spawned process (multiprocessing target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the daemon to handle
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s training[%(process)d] %(levelname)s %(name)s: %(message)s")
    from cynode.errors import TrainingError

    from . import events as ev
    from .loop.control import TrainerControl

    lock = threading.Lock()

    def emit(event: ev.Event) -> None:
        data = json.dumps(event.to_dict(), default=_jsonable).encode()
        with lock:
            try:
                events_conn.send_bytes(data)
            except (BrokenPipeError, OSError):
                pass  # the parent is gone; the job still checkpoints on its way out

    job_id = str(spec_data.get("job_id", "?"))
    emit(ev.Started(job_id=job_id, pid=os.getpid()))
    control = TrainerControl()
    signal.signal(signal.SIGTERM, lambda *_: control.request_pause())
    reader = threading.Thread(target=_read_commands, args=(commands_conn, control), name="commands", daemon=True)
    reader.start()
    try:
        from .spec import JobSpec

        try:
            spec = JobSpec.from_dict(spec_data)
        except TrainingError as exc:
            emit(ev.Failed(job_id=job_id, code=exc.code, message=exc.message))
            return
        from .job import run_job

        run_job(spec, emit, control)
    finally:
        events_conn.close()


def _read_commands(conn: Any, control: Any) -> None:
    log = logging.getLogger(__name__)
    while True:
        try:
            message = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            log.warning("the parent process is gone: pausing at the next step")
            control.request_pause()
            return
        command = message.get("command") if isinstance(message, dict) else None
        if command == "cancel":
            control.request_cancel()
        elif command == "pause":
            control.request_pause()
        elif command == "checkpoint":
            control.request_checkpoint()
        else:
            log.warning("ignoring unknown command %r", message)


def _jsonable(value: Any) -> Any:
    """Figures that are numpy/torch scalars or paths become plain JSON values."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)

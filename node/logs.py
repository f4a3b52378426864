"""Logging to stdout, as text or one JSON object per line (`[node] log_format`).

Under journald (systemd sets `JOURNAL_STREAM` to the device and inode of the stream it reads, and the
CLI checks that stdout is that stream) the journal stamps every line with its own time, so text lines
carry no timestamp of their own, and each line starts with a syslog priority (`<3>` error, `<4>`
warning, `<6>` info, `<7>` debug) that journald strips and stores as the entry's PRIORITY, so
`journalctl -p warning` works. Every line of a multi-line message (a traceback) gets the prefix: the
journal stores each line as an entry of its own.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping

# syslog(3) priorities, as sd-daemon(3) prefixes expect them.
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def priority(level: int) -> int:
    for threshold in sorted(PRIORITIES, reverse=True):
        if level >= threshold:
            return PRIORITIES[threshold]
    return 7


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _JournalFormatter(logging.Formatter):
    """`<priority>` on every line of what `inner` formats."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self._inner.format(record).splitlines() or [""])


def under_journald(environ: Mapping[str, str], stream=None) -> bool:
    """True when `stream` (stdout) is the journal stream systemd named in JOURNAL_STREAM."""
    value = environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        info = os.fstat((stream or sys.stdout).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


def setup_logging(fmt: str = "text", level: str = "info", node_id: str = "", *, journal: bool = False) -> None:
    handler = logging.StreamHandler(sys.stdout)
    prefix = f"[{node_id}] " if node_id else ""
    if fmt == "json":
        formatter: logging.Formatter = _JsonFormatter()
    elif journal:
        formatter = logging.Formatter(f"{prefix}%(name)s: %(message)s")  # the journal has time and level
    else:
        formatter = logging.Formatter(f"%(asctime)s %(levelname)-7s {prefix}%(name)s: %(message)s")
    handler.setFormatter(_JournalFormatter(formatter) if journal else formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter that would drown the daemon's own lines.
    for noisy in ("aiohttp.access", "transformers", "urllib3", "filelock", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

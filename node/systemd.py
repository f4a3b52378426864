"""systemd integration for `Type=notify` units: sd_notify messages, the watchdog and the status line.

systemd hands a notify-type service three variables: `NOTIFY_SOCKET` (a datagram socket, a path or
an abstract `@name`), and with `WatchdogSec=` also `WATCHDOG_USEC` (the deadline) and `WATCHDOG_PID`
(the process that must ping). The daemon sends, in this order:

    STATUS=starting ...       what start-up is doing (loading model X)
    READY=1                   once every role in node.toml serves
    STATUS=...                when what the roles report changes (leader/standby, models loaded)
    WATCHDOG=1                every half deadline, from a task on the event loop
    STOPPING=1, STATUS=draining ...   when SIGTERM starts the drain

The watchdog pings come from an ordinary asyncio task, so they stop when the loop is wedged (a
blocking call, a busy loop, a deadlock on the GIL): that is the failure systemd should restart.
The variables are removed from the environment when read (as sd_notify(3)'s `unset_environment`
does), so spawned children (vLLM's engine core, training processes) never talk to systemd as if they
were the service.

Notifications are a courtesy to the supervisor: a missing or broken socket never fails the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping, MutableMapping

log = logging.getLogger(__name__)

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
STATUS_EVERY_S = 1.0  # how often the status line is recomputed (sent only when it changes)


class Notifier:
    """Sends sd_notify datagrams to one socket; every method is a no-op without a socket."""

    def __init__(self, socket_path: str | None, *, watchdog_usec: int | None = None) -> None:
        self.socket_path = socket_path or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._address = None
        if self.socket_path:
            # "@name" is Linux's abstract namespace: a leading NUL byte on the wire.
            self._address = "\0" + self.socket_path[1:] if self.socket_path.startswith("@") else self.socket_path
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str], *, pid: int | None = None) -> Notifier:
        """Take the systemd variables out of `environ` (children must not inherit them)."""
        values = {name: environ.pop(name, None) for name in _VARIABLES}
        watchdog = _watchdog_usec(values, os.getpid() if pid is None else pid)
        return cls(values["NOTIFY_SOCKET"], watchdog_usec=watchdog)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_period(self) -> float | None:
        """Seconds between pings: half the deadline, as sd_watchdog_enabled(3) recommends."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def send(self, *assignments: str) -> None:
        """One datagram with newline-separated `KEY=value` assignments."""
        if self._address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:
            if not self._warned:  # once: a supervisor that went away must not flood the log
                log.warning("systemd notification to %s failed: %s", self.socket_path, exc)
                self._warned = True

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={_one_line(text)}")

    def stopping(self, status: str | None = None) -> None:
        self.send("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more time to start or stop than TimeoutStartSec/TimeoutStopSec give."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def ping_watchdog(notifier: Notifier) -> None:
    """Ping every half deadline until cancelled; returns at once when systemd set no watchdog.

    The ping is sent by this task itself, never from a thread: a thread would keep pinging while the
    event loop that serves every request is stuck, which is exactly what the watchdog must catch.
    """
    period = notifier.watchdog_period
    if period is None or not notifier.enabled:
        return
    log.info("systemd watchdog: pinging every %.1fs", period)
    while True:
        notifier.watchdog()
        await asyncio.sleep(period)


async def report_status(notifier: Notifier, line: Callable[[], str], every: float = STATUS_EVERY_S) -> None:
    """Send STATUS= whenever `line()` changes, until cancelled."""
    if not notifier.enabled:
        return
    last = None
    while True:
        try:
            text = _one_line(line())
        except Exception:  # a role's report must never stop the reporting
            log.exception("computing the systemd status line failed")
            text = last
        if text and text != last:
            notifier.status(text)
            last = text
        await asyncio.sleep(every)


def status_line(phase: str, roles: Mapping[str, tuple[bool, str]]) -> str:
    """`serving: gateway listening; coordinator leader (epoch 3), 1/1 workers healthy; worker loaded: m`."""
    parts = [f"{name} {detail}" if detail else name for name, (_, detail) in roles.items()]
    return f"{phase}: {'; '.join(parts)}" if parts else phase


def _launcher_pid() -> str | None:
    """The one-file binary's launcher, which systemd knows as the main process: it unpacks the binary
    and runs the daemon as its child (PyInstaller on Linux), so the watchdog meant for it is ours."""
    if getattr(sys, "frozen", False) and hasattr(sys, "_MEIPASS"):
        return str(os.getppid())
    return None


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _watchdog_usec(values: Mapping[str, str | None], pid: int) -> int | None:
    usec, owner = values.get("WATCHDOG_USEC"), values.get("WATCHDOG_PID")
    if not usec:
        return None
    if owner and owner.strip() not in (str(pid), _launcher_pid()):
        return None  # the watchdog is meant for another process (we were started by the service)
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec)
        return None
    return value if value > 0 else None

"""A fake systemd: a NOTIFY_SOCKET that records every sd_notify datagram with the time it arrived.

It receives on a thread of its own, so it keeps recording while the event loop of the process under
test is stuck (which is what the watchdog tests wedge on purpose).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # the sender's pid, as systemd sees it
        self._sock.settimeout(0.2)
        self.received: list[tuple[float, str]] = []  # (monotonic time, one KEY=value assignment)
        self.senders: dict[str, set[int]] = {}  # assignment -> pids that sent it
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="fake-systemd", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data, ancillary, _, _ = self._sock.recvmsg(65536, socket.CMSG_SPACE(struct.calcsize("3i")))
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            pid = next((struct.unpack("3i", d)[0] for level, kind, d in ancillary
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
            with self._lock:
                for line in data.decode().splitlines():
                    if line:
                        self.received.append((now, line))
                        self.senders.setdefault(line, set()).add(pid)

    def assignments(self) -> list[str]:
        with self._lock:
            return [line for _, line in self.received]

    def times_of(self, assignment: str) -> list[float]:
        with self._lock:
            return [at for at, line in self.received if line == assignment]

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate(self.assignments())
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; got {self.assignments()[-20:]}")

    async def wait_for_async(self, predicate, timeout: float, what: str):
        """`wait_for` for a test that runs on the event loop whose tasks send the notifications."""
        import asyncio

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate(self.assignments())
            if value:
                return value
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; got {self.assignments()[-20:]}")

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        self._thread.join(2)

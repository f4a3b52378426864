"""A fake systemd: a NOTIFY_SOCKET that records every sd_notify datagram with the time it arrived.

It receives on a thread of its own, so it keeps recording while the event loop of the process under
test is stuck (which is what the watchdog tests wedge on purpose).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self.received: list[tuple[float, str]] = []  # (monotonic time, one KEY=value assignment)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="fake-systemd", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self._lock:
                self.received.extend((now, line) for line in data.decode().splitlines() if line)

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

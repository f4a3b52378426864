import pytest

from cluster_harness import Cluster


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.call_failed = report.failed


@pytest.fixture
def cluster(request, tmp_path, redis_server, models_dir):
    """An empty cluster on the session's Redis under its own name; every node is killed afterwards.
    When the test fails, the end of each node's log is printed (pytest shows it with the failure)."""
    c = Cluster(tmp_path, redis_server.url, models_dir)
    yield c
    c.stop()
    if getattr(request.node, "call_failed", False):
        for name, node in c.nodes.items():
            print(f"----- log of {name} (last 6000 characters) -----\n{node.log()}")

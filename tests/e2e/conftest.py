import pytest

import binary_build
from daemon_harness import CynodeProcess


@pytest.fixture(scope="module")
def node(tmp_path_factory, redis_server, builtin_model_dir, models_dir):
    """One real single-node daemon (all roles) against the session's Redis and the real model."""
    proc = CynodeProcess(tmp_path_factory.mktemp("node"), redis_url=redis_server.url, models_dir=models_dir).start()
    yield proc
    code = proc.terminate()
    assert code == 0, f"cynode exited with {code} on SIGTERM:\n{proc.log()}"


@pytest.fixture(scope="session")
def cynode_binary():
    """dist/cynode built from these sources (once per session; reused while up to date)."""
    return binary_build.build("binary")

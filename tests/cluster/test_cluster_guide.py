"""docs/cluster.md's walkthrough, run as written: three real daemons on 127.0.0.2-4 with the default
ports, one Redis, the real model, a chat through each gateway, a worker leaving and joining."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_the_cluster_guide_runs_as_written(builtin_model_dir, models_dir, tmp_path):
    cynode = Path(sys.executable).parent / "cynode"
    env = {**os.environ, "CYNODE": str(cynode), "MODELS_DIR": str(models_dir), "WORK": str(tmp_path / "walk"),
           "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(["bash", str(REPO / "docs" / "cluster-walkthrough.sh")], env=env,
                            capture_output=True, text=True, timeout=840)
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    out = result.stdout
    for step in ("1. Redis", "4. Start host a", "7. A chat through any node", "8. A worker leaves", "done"):
        assert f"== {step}" in out, f"step {step!r} did not run:\n{out[-3000:]}"
    assert out.count("answered:") == 3 and "Paris" in out

"""What ships in packaging/: the default config, the quick-start config and the systemd unit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cynode.config import load_config

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"


def test_the_shipped_node_toml_is_exactly_the_defaults():
    shipped = load_config(PACKAGING / "node.toml", {})
    assert shipped.model_dump() == load_config(None, {}).model_dump()


def test_the_quick_start_config_runs_everything_with_an_embedded_redis():
    config = load_config(PACKAGING / "single-node.toml", {})
    assert config.redis.embedded and config.node.roles == ("gateway", "coordinator", "worker")
    assert config.node.data_dir == Path.cwd() / ".cynode"  # relative paths start from the working directory


def test_the_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (apt-get install systemd): the unit cannot be checked")
    cynode = Path(sys.executable).with_name("cynode")
    unit = tmp_path / "cynode.service"
    unit.write_text((PACKAGING / "cynode.service").read_text().replace("/usr/local/bin/cynode", str(cynode)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Type=notify" in unit.read_text()


def test_the_shipped_node_toml_is_config_explain_word_for_word():
    from cynode.config import explain

    shipped = (PACKAGING / "node.toml").read_text()
    expected = explain().replace('\nid = "<host name>"', '\n# id = "<host name>"')
    body = lambda text: text[text.index("[node]"):]  # noqa: E731 - the part after the header comments
    assert body(shipped) == body(expected), "packaging/node.toml is stale: regenerate it from `cynode config explain`"

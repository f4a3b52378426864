"""`[redis] sentinels`: a half-given Sentinel setup stops start-up naming the field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cynode.config import load_config
from cynode.errors import ConfigError


@pytest.mark.parametrize("text, expected", [
    ('[redis]\nsentinels = ["127.0.0.1:26379"]', "[redis] sentinels needs master_name"),
    ('[redis]\nmaster_name = "main"', "[redis] master_name 'main' needs sentinels"),
    ('[redis]\nsentinels = ["127.0.0.1"]\nmaster_name = "m"', "[redis] sentinels[0] '127.0.0.1' has no port"),
    ('[redis]\nsentinels = ["127.0.0.1:26379"]\nmaster_name = "m"\nembedded = true', "sentinels and embedded = true"),
    ('[redis]\nsentinels = ["127.0.0.1:26379"]\nmaster_name = "m"\nwait_replicas = -1', "[redis] wait_replicas"),
])
def test_a_half_given_sentinel_setup_names_the_field(tmp_path, text, expected):
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert expected in str(caught.value)


def test_a_full_sentinel_setup_loads(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[redis]\nsentinels = ["10.0.0.1:26379", "10.0.0.2:26379"]\nmaster_name = "main"\n')
    redis = load_config(path, {}).redis
    assert redis.sentinels == ("10.0.0.1:26379", "10.0.0.2:26379") and redis.master_name == "main"
    assert redis.wait_replicas == 1


@pytest.mark.timeout(60)
def test_cynode_run_with_sentinels_but_no_master_name_refuses_to_start(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\ndata_dir = "{tmp_path}"\n[redis]\nsentinels = ["127.0.0.1:26379"]\n')
    done = subprocess.run([sys.executable, "-m", "cynode", "run", "-c", str(path)], capture_output=True, text=True,
                          timeout=50)
    assert done.returncode != 0
    assert "[redis] sentinels needs master_name" in done.stdout + done.stderr

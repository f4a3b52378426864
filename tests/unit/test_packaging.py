"""What ships in packaging/: the default config, the quick-start config and the systemd unit."""

from __future__ import annotations

import re
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


def _unit(tmp_path) -> Path:
    """The shipped unit with ExecStart pointing at this venv's cynode (verify wants an executable)."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (apt-get install systemd): the unit cannot be checked")
    cynode = Path(sys.executable).with_name("cynode")
    unit = tmp_path / "cynode.service"
    unit.write_text((PACKAGING / "cynode.service").read_text().replace("/usr/bin/cynode", str(cynode)))
    return unit


def test_the_systemd_unit_verifies(tmp_path):
    unit = _unit(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    settings = [line.strip() for line in unit.read_text().splitlines() if "=" in line and not line.startswith("#")]
    for expected in ("Type=notify", "NotifyAccess=all", "WatchdogSec=60", "Restart=on-failure", "KillMode=mixed",
                     "CapabilityBoundingSet=", "SystemCallFilter=@system-service", "ProtectKernelTunables=yes",
                     "ProtectKernelModules=yes", "ProtectKernelLogs=yes", "LockPersonality=yes", "NoNewPrivileges=yes",
                     "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert expected in settings, f"the unit lacks {expected}"


def test_the_unit_is_hardened_by_systemds_own_measure(tmp_path):
    """`systemd-analyze security` on the unit file: exposure 0 (locked down) to 10 (nothing)."""
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(_unit(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    score = re.search(r"Overall exposure level for cynode.service: ([\d.]+) (\w+)", result.stdout)
    assert score, result.stdout + result.stderr
    print(f"systemd-analyze security: {score.group(1)} {score.group(2)}")
    assert float(score.group(1)) <= 2.0, result.stdout


def test_the_shipped_node_toml_is_config_explain_word_for_word():
    from cynode.config import explain

    shipped = (PACKAGING / "node.toml").read_text()
    expected = explain().replace('\nid = "<host name>"', '\n# id = "<host name>"')
    body = lambda text: text[text.index("[node]"):]  # noqa: E731 - the part after the header comments
    assert body(shipped) == body(expected), "packaging/node.toml is stale: regenerate it from `cynode config explain`"

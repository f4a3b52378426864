"""The `cynode` command as a user runs it."""

from __future__ import annotations

import base64
import subprocess
import sys

from cynode.config import load_config


def cynode(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cynode", *args], capture_output=True, text=True, timeout=60, env=env)


def test_help_lists_the_commands_without_importing_torch():
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['cynode', '--help']\n"
        "try:\n    runpy.run_module('cynode', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'peft') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "run" in result.stdout and "config" in result.stdout and "keygen" in result.stdout
    assert "HEAVY []" in result.stdout


def test_config_check_accepts_a_good_file(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[node]\nid = "edge-01"\nroles = ["worker"]\n')
    result = cynode("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "edge-01" in result.stdout


def test_config_check_names_the_file_key_and_reason(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[cluster]\nseeds = ["10.0.0.5"]\n')
    result = cynode("config", "check", str(path))
    assert result.returncode == 2
    assert f"{path}: [cluster] seeds[0] '10.0.0.5' has no port (expected host:port)" in result.stderr


def test_config_explain_shows_every_section_with_defaults():
    result = cynode("config", "explain")
    assert result.returncode == 0
    for line in ('[node]', '[coordinator.task_queue]', '[[coordinator.workers]]', 'health_check_interval = "10s"',
                 'max_size = 1000', 'listen = "0.0.0.0:50051"', '[metrics]'):
        assert line in result.stdout, line


def test_config_explain_output_is_a_loadable_node_toml(tmp_path):
    path = tmp_path / "explained.toml"
    path.write_text(cynode("config", "explain").stdout.replace('"<host name>"', '"h"'))
    assert load_config(path, {}).coordinator.prompt_cache.ttl == 1800.0


def test_keygen_prints_a_32_byte_base64_key():
    result = cynode("keygen")
    assert result.returncode == 0
    assert len(base64.b64decode(result.stdout.strip())) == 32


def test_run_with_a_bad_config_stops_before_starting_anything(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[gateway]\nlisten = "nowhere"\n')
    result = cynode("run", "-c", str(path))
    assert result.returncode == 2
    assert "[gateway] listen 'nowhere' has no port" in result.stderr

"""The single binary (`make binary`) as a user gets it: no venv, no source tree, a clean folder."""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import tomli_w

from daemon_harness import free_port

REPO = Path(__file__).resolve().parents[2]


def clean_env(home: Path) -> dict[str, str]:
    """What a service would have: no virtualenv, no PYTHONPATH, nothing of this checkout."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "HF_HUB_OFFLINE": "1",
            "TMPDIR": str(home)}


def test_the_binary_reports_its_version_commit_and_engines(cynode_binary, tmp_path):
    result = subprocess.run([str(cynode_binary), "--version"], capture_output=True, text=True, timeout=300,
                            env=clean_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    first, engines = result.stdout.strip().splitlines()
    assert re.fullmatch(rf"cynode 0\.\d+\.\d+ \(commit {commit}(-dirty)?, full build \d{{4}}-\d\d-\d\dT[\d:]+Z\)", first), first
    expected = ["sim", "transformers"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    assert engines == f"engines: {', '.join(expected)}"  # what this venv has, the binary carries


def test_the_binary_runs_a_node_from_a_clean_folder_and_answers_paris(cynode_binary, tmp_path):
    ports = {name: free_port() for name in ("gateway", "coordinator", "worker", "metrics", "gossip", "redis")}
    config = {
        "node": {"id": "edge-01", "data_dir": ".cynode"},  # relative: inside the clean folder
        "redis": {"url": f"redis://127.0.0.1:{ports['redis']}/0", "embedded": True},
        "gossip": {"bind": f"127.0.0.1:{ports['gossip']}"},
        "gateway": {"listen": f"127.0.0.1:{ports['gateway']}"},
        "coordinator": {"listen": f"127.0.0.1:{ports['coordinator']}"},
        "worker": {"listen": f"127.0.0.1:{ports['worker']}"},
        "metrics": {"listen": f"127.0.0.1:{ports['metrics']}"},
    }
    (tmp_path / "node.toml").write_text(tomli_w.dumps(config))
    log = open(tmp_path / "cynode.log", "wb")
    proc = subprocess.Popen([str(cynode_binary), "run", "-c", "node.toml"], cwd=tmp_path, env=clean_env(tmp_path),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{ports['metrics']}/readyz", tmp_path / "cynode.log", timeout=600)
        key = next(k["key"] for k in tomllib.loads((tmp_path / ".cynode" / "api-keys.toml").read_text())["keys"])
        reply = httpx.post(f"http://127.0.0.1:{ports['gateway']}/v1/chat/completions", timeout=180,
                           headers={"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"},
                           json={"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 24,
                                 "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert reply.status_code == 200, reply.text
        assert reply.headers["X-Cache"] == "miss"
        assert "Paris" in reply.json()["choices"][0]["message"]["content"]
        # The built-in model came out of the binary and was converted here, in the clean folder.
        assert (tmp_path / ".cynode" / "models" / "smollm2-135m-instruct" / "config.json").is_file()
        page = httpx.get(f"http://127.0.0.1:{ports['metrics']}/", timeout=10)
        assert page.status_code == 200 and "cynode status" in page.text  # packaged assets are in the binary
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, (tmp_path / "cynode.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()
    assert not list(tmp_path.glob("_MEI*")), "the binary leaves no unpacked copy behind"


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the binary exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout}s:\n{log.read_text()[-4000:]}")

"""The single binary (`make binary`) as a user gets it: no venv, no source tree, a clean folder."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import psutil
import pytest
import tomli_w

import binary_build
from daemon_harness import free_port, still_running
from notify_socket import NotifySocket

# The first test of the session builds the binary in its setup (minutes on 2 cores): its limit covers that.
pytestmark = pytest.mark.timeout(binary_build.BUILD_TIMEOUT_S + 300)

REPO = Path(__file__).resolve().parents[2]


def clean_env(home: Path) -> dict[str, str]:
    """What a service would have: no virtualenv, no PYTHONPATH, nothing of this checkout."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "TMPDIR": str(home)}


def test_the_binary_reports_its_version_commit_and_engines(cynode_binary, tmp_path):
    result = subprocess.run([str(cynode_binary), "--version"], capture_output=True, text=True, timeout=300,
                            env=clean_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first, engines = result.stdout.strip().splitlines()
    match = re.fullmatch(r"cynode 0\.\d+\.\d+ \(commit ([0-9a-f]{12})(-dirty)?, full build \d{4}-\d\d-\d\dT[\d:]+Z\)", first)
    assert match, first
    kind = subprocess.run(["git", "-C", str(REPO), "cat-file", "-t", match.group(1)], capture_output=True, text=True)
    assert kind.stdout.strip() == "commit", f"{match.group(1)} is not a commit of this repository"
    expected = ["sim", "transformers"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    assert engines == f"engines: {', '.join(expected)}"  # what this venv has, the binary carries


def test_the_binary_runs_a_node_from_a_clean_folder_and_answers_paris(cynode_binary, builtin_model_dir, tmp_path):
    """The built-in model through transformers (unpacked from the binary and converted here), and, when
    the binary carries vLLM, the same weights through vLLM: its engine core is a spawned process and
    it inspects the model in a `sys.executable -m` subprocess, both of which must work frozen."""
    carries_vllm = "vllm" in (cynode_binary.parent / f"{cynode_binary.name}.buildinfo").read_text()
    ports = {name: free_port() for name in ("gateway", "coordinator", "worker", "metrics", "gossip", "redis")}
    models = [{"id": "smollm2-vllm", "source": {"path": str(builtin_model_dir)}, "engine": "vllm"}] if carries_vllm else []
    (tmp_path / "models.json").write_text(json.dumps({"models": models}))
    config = {
        "node": {"id": "edge-01", "data_dir": ".cynode"},  # relative: inside the clean folder
        "redis": {"url": f"redis://127.0.0.1:{ports['redis']}/0", "embedded": True},
        "gossip": {"bind": f"127.0.0.1:{ports['gossip']}"},
        "gateway": {"listen": f"127.0.0.1:{ports['gateway']}"},
        "coordinator": {"listen": f"127.0.0.1:{ports['coordinator']}"},
        "worker": {"listen": f"127.0.0.1:{ports['worker']}", "model_registry": "models.json"},
        "metrics": {"listen": f"127.0.0.1:{ports['metrics']}"},
    }
    (tmp_path / "node.toml").write_text(tomli_w.dumps(config))
    log = open(tmp_path / "cynode.log", "wb")
    fake_systemd = NotifySocket(tmp_path / "notify.sock")
    # Started as systemd starts the unit: WATCHDOG_PID is the process systemd started (exec keeps the pid).
    proc = subprocess.Popen(["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$0" run -c node.toml', str(cynode_binary)],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            env={**clean_env(tmp_path), "NOTIFY_SOCKET": str(fake_systemd.path), "WATCHDOG_USEC": "2000000"})
    try:
        _wait_ready(proc, f"http://127.0.0.1:{ports['metrics']}/readyz", tmp_path / "cynode.log", timeout=600)
        got = fake_systemd.wait_for(lambda a: a.count("WATCHDOG=1") >= 2 and "READY=1" in a and a, 30, "READY and pings")
        assert got.index("READY=1") < len(got) - 1
        # The one-file binary's launcher is the main process; the daemon is its child and speaks for
        # it (hence NotifyAccess=all in the unit), and the launcher's watchdog is the daemon's to ping.
        (sender,) = fake_systemd.senders["READY=1"]
        assert sender != proc.pid and _parent_of(sender) == proc.pid
        # Signals to the main process reach the daemon: SIGHUP reloads, SIGTERM drains.
        proc.send_signal(signal.SIGHUP)
        _wait_log(tmp_path / "cynode.log", "API keys reloaded", 30)
        key = next(k["key"] for k in tomllib.loads((tmp_path / ".cynode" / "api-keys.toml").read_text())["keys"])
        for model in ["smollm2-135m-instruct"] + (["smollm2-vllm"] if carries_vllm else []):
            reply = _chat(ports["gateway"], key, model)
            assert reply.status_code == 200, reply.text
            assert reply.headers["X-Cache"] == "miss"
            assert "Paris" in reply.json()["choices"][0]["message"]["content"], (model, reply.json())
        # The built-in model came out of the binary and was converted here, in the clean folder;
        # systemd was told while it loaded.
        assert (tmp_path / ".cynode" / "models" / "smollm2-135m-instruct" / "config.json").is_file()
        statuses = [line for line in fake_systemd.assignments() if line.startswith("STATUS=")]
        assert any("loading model smollm2-135m-instruct" in line for line in statuses), statuses
        children = [psutil.Process(pid) for pid in _descendants(proc.pid)]
        assert len(children) >= 2 + carries_vllm  # the daemon, its redis-server (and vLLM's engine core)
        page = httpx.get(f"http://127.0.0.1:{ports['metrics']}/", timeout=10)
        assert page.status_code == 200 and "cynode status" in page.text  # packaged assets are in the binary
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, (tmp_path / "cynode.log").read_text()[-3000:]
        assert "STOPPING=1" in fake_systemd.assignments()
        # A child that exits just as the daemon does is reparented to init, which reaps it in its own
        # time (two runs in three on one machine saw one): a zombie has stopped, one still running has not.
        left = {p.pid: p.as_dict(["name", "cmdline"], ad_value="?") for p in still_running(children, 10)}
        assert not left, f"every child stopped with the daemon; still running: {left}"
    finally:
        if proc.poll() is None:
            # SIGKILL to the one-file launcher would orphan the daemon under it: kill the whole tree.
            for pid in [*_descendants(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(30)
        log.close()
        fake_systemd.close()
    assert not list(tmp_path.glob("_MEI*")), "the binary leaves no unpacked copy behind"


def _chat(port: int, key: str, model: str) -> httpx.Response:
    """A chat as an OpenAI client sends it: a 503 with Retry-After (the first request of a model waits
    for it to load, which under a loaded CI machine can outlast the gateway's call to the coordinator)
    is retried after the time it names, for up to ten minutes."""
    deadline = time.monotonic() + 600
    while True:
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=600,
                           headers={"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"},
                           json={"model": model, "temperature": 0, "max_tokens": 24,
                                 "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        if reply.status_code != 503 or time.monotonic() > deadline:
            return reply
        time.sleep(float(reply.headers.get("Retry-After", "2")))


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = _parent_of(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _wait_log(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged after {timeout}s:\n{path.read_text()[-3000:]}")
        time.sleep(0.2)


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

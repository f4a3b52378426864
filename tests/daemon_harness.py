"""Real `cynode run` daemons in subprocesses, each with its own node.toml, ports and data_dir."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import tomli_w



_handed_out: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for TCP and UDP on `host`, never handed out before in this process. Drawn below the
    kernel's ephemeral range, so outgoing connections cannot take it between now and the bind."""
    while True:
        port = random.randint(20000, 32000)
        if (host, port) in _handed_out:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                tcp.bind((host, port))
                udp.bind((host, port))
        except OSError:
            continue
        _handed_out.add((host, port))
        return port


class CynodeProcess:
    def __init__(self, workdir: Path, *, redis_url: str, models_dir: Path, host: str = "127.0.0.1",
                 embedded_redis: bool = False, extra: dict | None = None, env: dict | None = None,
                 launcher: tuple[str, ...] = ()) -> None:
        """`launcher`: words run before the daemon's command (`ip netns exec <ns>`: a node in a network
        namespace of its own; its ports are then drawn on 127.0.0.1 here, any is free in there)."""
        self.workdir = workdir
        self.host = host
        self.launcher = launcher
        port_host = "127.0.0.1" if launcher else host
        self.ports = {name: free_port(port_host) for name in ("gateway", "coordinator", "worker", "metrics", "gossip")}
        config = {
            "node": {"id": f"node-{self.ports['gateway']}", "data_dir": str(workdir / "data"), "drain_timeout": "30s"},
            "gossip": {"bind": f"{host}:{self.ports['gossip']}"},
            "redis": {"url": redis_url, "embedded": embedded_redis},
            "gateway": {"listen": f"{host}:{self.ports['gateway']}"},
            "coordinator": {"listen": f"{host}:{self.ports['coordinator']}", "health_check_interval": "1s",
                            "health_check_timeout": "1s"},
            "worker": {"listen": f"{host}:{self.ports['worker']}", "models_dir": str(models_dir)},
            "metrics": {"listen": f"{host}:{self.ports['metrics']}"},
        }
        for section, values in (extra or {}).items():
            config.setdefault(section, {}).update(values)
        self.config_id = config["node"]["id"]
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "node.toml"
        self.config_path.write_text(tomli_w.dumps(config))
        self.log_path = workdir / "cynode.log"
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.ports['gateway']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports['metrics']}"

    def start(self, timeout: float = 300.0) -> "CynodeProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.launcher, sys.executable, "-m", "cynode", "run", "-c", str(self.config_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cynode exited with {self.proc.returncode} during start-up:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.metrics_url}/readyz", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"cynode not ready after {timeout:.0f}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def log_mark(self) -> int:
        """Where the log ends now; `log_since(mark)` is what was written after."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, mark: int) -> str:
        with open(self.log_path, "rb") as handle:
            handle.seek(mark)
            return handle.read().decode(errors="replace")

    def api_key(self, name: str = "admin") -> str:
        keys = tomllib.loads((self.workdir / "data" / "api-keys.toml").read_text())["keys"]
        return next(k["key"] for k in keys if k["name"] == name)

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the daemon, then what it started and is still running 5 s later, as systemd ends the
        rest of a unit's cgroup once its main process is gone: vLLM's engine core outlives a killed
        parent (4 GB each, which starved later tests of memory), the embedded Redis does not."""
        if self.proc and self.proc.poll() is None:
            try:
                children = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                children = []
            self.proc.kill()
            self.proc.wait(10)
            for child in still_running(children, 5):
                with contextlib.suppress(psutil.Error):
                    child.kill()
            still_running(children, 10)

    def get_json(self, path: str, key: str | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(self.base_url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


def still_running(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of `processes` still running after up to `timeout` s (a zombie, reaped by init in its own
    time, has stopped)."""
    deadline = time.monotonic() + timeout
    while True:
        running = []
        for process in processes:
            with contextlib.suppress(psutil.Error):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    running.append(process)
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.05)


def wait_for(predicate, timeout: float, what: str):
    """Poll `predicate` until it returns something true; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")

"""A full disk under Redis's data dir: Redis (appendonly) runs on a small tmpfs that a filler file
fills under load. While it is full, Redis refuses writes (MISCONF); the logs say why in words
("cannot persist writes (is the disk under its data dir full?)"); requests wait it out (the
gateway retries an unavailable coordinator within its budget) or, past it, get a 503 that says
why, before acceptance; no accepted request is lost or run twice; once space is freed the cluster
serves again without a restart. Needs root (mount -t tmpfs); skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from chaos_records import keep
from redis_harness import RedisServer
from runner import ChaosCluster
from scenarios import assert_invariants, references, run
from verdict import Fault


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "redis-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(mount) -> None:
    with open(mount / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass


@pytest.mark.timeout(240)
def test_a_full_disk_under_redis_refuses_new_work_clearly_and_loses_nothing(tmp_path, small_disk, models_dir):
    server = RedisServer(small_disk / "data").start()
    cluster = ChaosCluster(tmp_path / "cluster", server.url, models_dir)
    workers = [cluster.worker("w0"), cluster.worker("w1")]
    cluster.coordinator("c0", workers, task_queue={"lease_ttl": "4s"})
    gateway = cluster.gateway("g0")
    try:
        cluster.start()
        model = cluster.model(gateway)
        cluster.wait_serving(gateway, model)
        refs = references(gateway, model)

        def fill_the_disk() -> list[Fault]:
            fault = Fault("disk under Redis full (tmpfs)", time.monotonic())
            _fill(small_disk)
            time.sleep(4)
            os.unlink(small_disk / "filler")
            fault.healed = time.monotonic()
            return [fault]

        records, verdict, faults = run(cluster, model, refs, fill_the_disk, rate=6.0, after=8.0, prefix="fd")
        refused = [r for r in records if r.status == 503]
        keep("fault_full_disk_redis", {"summary": {**verdict.summary(), "refused_503": len(refused)},
                                       "faults": [f.__dict__ for f in faults], "records": [r.as_dict() for r in records]})
        print("full disk:", verdict.summary(), "refused with 503:", len(refused))
        assert_invariants(verdict, allow_retries=True)
        logs = "".join(n.log_path.read_text(errors="replace") for n in cluster.nodes.values())
        assert "cannot persist writes" in logs, "no log line says why Redis refused: was the disk full?"
        assert "MISCONF" in logs
        assert all("persist" in r.error for r in refused), [r.error for r in refused[:3]]
        assert not [f for f in verdict.failures if "status 503" not in f], verdict.failures[:5]
        # Healed: served again, without restarting anything.
        key = gateway.api_key()
        reply = httpx.post(f"{gateway.base_url}/v1/chat/completions", timeout=30, headers={
            "Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}, json={
            "model": model, "messages": [{"role": "user", "content": "after"}], "max_tokens": 4})
        assert reply.status_code == 200, reply.text
    finally:
        cluster.stop()
        server.stop()


@pytest.mark.timeout(90)
def test_a_node_whose_data_dir_is_full_refuses_to_start_naming_the_folder(tmp_path, small_disk):
    _fill(small_disk)
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{small_disk}/data"\nroles = ["worker"]\n[worker]\nbackend = "sim"\n'
                      f'listen = "127.0.0.1:0"\n[gossip]\nbind = "127.0.0.1:0"\n[metrics]\nlisten = "127.0.0.1:0"\n')
    done = subprocess.run([sys.executable, "-m", "cynode", "run", "-c", str(config)], capture_output=True, text=True,
                          timeout=80)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"[node] data_dir {small_disk}/data" in out and "No space left on device" in out, out[-2000:]
    assert "free space there" in out and "Traceback" not in out, out[-2000:]

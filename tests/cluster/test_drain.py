"""SIGTERM as an operator relies on it: stop admitting, finish streams up to one deadline, leave
gossip, release the leader lock so a standby takes over at once (real daemons, the sim engine)."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import time

import httpx

from cluster_harness import Cluster, chat, wait_for
from daemon_harness import CynodeProcess


def node(cluster: Cluster, name: str, host: str, seeds: list[str], **worker) -> CynodeProcess:
    process = CynodeProcess(cluster.workdir / name, host=host, redis_url=cluster.redis_url, models_dir=cluster.models_dir, extra={
        "node": {"id": name, "drain_timeout": "4s"},
        "cluster": {"name": cluster.name, "key_file": str(cluster.key_file), "seeds": seeds},
        # A long TTL: a standby that leads soon after the leader exits proves the lock was released.
        "coordinator": {"leader_ttl": "30s", "health_check_interval": "500ms", "health_check_timeout": "500ms"},
        "worker": {"backend": "sim", "sim": {"tokens_per_second": 20.0, "answer_tokens": 400, **worker}},
    })
    cluster.nodes[name] = process
    return process


def members(of: CynodeProcess) -> dict[str, str]:
    reply = httpx.get(f"{of.metrics_url}/v1/cluster/members", headers={"Authorization": f"Bearer {of.api_key()}"}, timeout=10)
    return {m["id"]: m["state"] for m in reply.json()["members"]}


def refused(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) != 0


def test_sigterm_stops_admitting_finishes_short_streams_cuts_long_ones_at_the_deadline_and_hands_over(cluster):
    first = node(cluster, "a", "127.0.0.2", [])
    cluster.start(first)
    wait_for(lambda: (l := cluster.leader()) and l["id"] == "a", 30, "a to lead")
    second = node(cluster, "b", "127.0.0.3", [f"127.0.0.2:{first.ports['gossip']}"])
    cluster.start(second)
    wait_for(lambda: members(first).get("b") == "alive" and members(second).get("a") == "alive", 60, "a and b to meet")
    epoch = int(cluster.leader()["epoch"])

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        # 20 tokens/s: the short one needs 1.5 s, the long one 20 s, far past the 4 s drain deadline.
        short = pool.submit(chat, first, "sim", content="short", max_tokens=30, stream=True, cache=False)
        long = pool.submit(chat, first, "sim", content="long", max_tokens=400, stream=True, cache=False)
        wait_for(lambda: _active(first) + _active(second) >= 2, 20, "both streams to be generating")  # on a or b
        first.proc.send_signal(signal.SIGTERM)
        sigterm_at = time.monotonic()

        # Stop admitting: the gateway port closes at once and /readyz says so while the streams run.
        wait_for(lambda: refused(first.host, first.ports["gateway"]), 5, "the gateway port to close")
        assert httpx.get(f"{first.metrics_url}/readyz", timeout=5).status_code == 503
        # Leave gossip: b hears a goodbye, not a failure.
        wait_for(lambda: members(second).get("a") == "left", 5, "b to see a leave")
        assert first.proc.poll() is None, "a should still be draining"

        text, finish, _ = short.result(timeout=30)
        assert finish == "length" and text, "the short stream finishes during the drain"
        try:
            _, long_finish, _ = long.result(timeout=30)
        except httpx.HTTPError:
            long_finish = "cut"
        assert long_finish != "length", "the long stream cannot have finished: it was cut at the deadline"

    assert first.proc.wait(30) == 0, first.log()
    drained_in = time.monotonic() - sigterm_at
    assert drained_in < 4 + 6, f"the drain took {drained_in:.1f}s; [node] drain_timeout is 4s for all roles together\n{first.log()[-6000:]}"
    # Release the leader lock: a 30 s TTL would keep b waiting; b leads within a couple of seconds.
    after = wait_for(lambda: (l := cluster.leader()) and l["id"] == "b" and l, 10, "b to take over the lock a released")
    assert int(after["epoch"]) > epoch
    log = first.log()
    assert "SIGTERM received: draining" in log and "drain timeout: cutting off 1 request(s)" in log


def _active(of: CynodeProcess) -> float:
    text = httpx.get(f"{of.metrics_url}/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("worker_active_requests "))

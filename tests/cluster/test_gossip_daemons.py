"""Gossip between real daemons, each on its own loopback address as real hosts would be."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx

from cluster_harness import Cluster, wait_for
from cynode.cluster_key import ensure_key_file
from daemon_harness import CynodeProcess




def members(node: CynodeProcess) -> dict[str, dict]:
    reply = httpx.get(f"{node.metrics_url}/v1/cluster/members", timeout=10,
                      headers={"Authorization": f"Bearer {node.api_key()}"})
    assert reply.status_code == 200, reply.text
    return {m["id"]: m for m in reply.json()["members"]}


def daemon(cluster: Cluster, name: str, ip: str, seeds: list[str], *, key_file=None, cluster_name=None) -> CynodeProcess:
    node = CynodeProcess(cluster.workdir / name, host=ip, redis_url=cluster.redis_url, models_dir=cluster.models_dir, extra={
        "node": {"id": name, "roles": ["worker"]},
        "cluster": {"name": cluster_name or cluster.name, "key_file": str(key_file or cluster.key_file), "seeds": seeds},
        "worker": {"backend": "sim"},
    })
    cluster.nodes[name] = node
    return node


def test_five_daemons_find_each_other_notice_a_death_and_see_it_come_back(cluster):
    seed = daemon(cluster, "n1", "127.0.0.2", [])
    seed_address = f"127.0.0.2:{seed.ports['gossip']}"
    others = [daemon(cluster, f"n{i}", f"127.0.0.{i + 1}", [seed_address]) for i in range(2, 6)]
    cluster.start(seed, *others)
    everyone = [seed, *others]
    names = {f"n{i}" for i in range(1, 6)}
    for node in everyone:
        wait_for(lambda n=node: {k for k, m in members(n).items() if m["state"] == "alive"} == names, 60,
                 f"{node.config_id} to see all five alive")
    view = members(seed)["n4"]
    assert view["roles"] == ["worker"] and view["address"].startswith("127.0.0.5:")
    assert view["meta"]["models"] == ["sim"] and view["meta"]["addr"]["worker"].startswith("127.0.0.5:")

    victim = cluster.nodes["n3"]
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    survivors = [n for n in everyone if n is not victim]
    for node in survivors:
        wait_for(lambda n=node: members(n)["n3"]["state"] == "dead", 60, f"{node.config_id} to mark n3 dead")
    dead_incarnation = members(seed)["n3"]["incarnation"]

    victim.start(timeout=60)
    for node in survivors:
        wait_for(lambda n=node: (m := members(n)["n3"])["state"] == "alive" and m["incarnation"] > dead_incarnation,
                 60, f"{node.config_id} to see n3 alive again with a higher incarnation")

    # The operator's view of the same thing.
    result = subprocess.run([sys.executable, "-m", "cynode", "members", "-c", str(seed.config_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" alive ") == 5 and "127.0.0.4:" in result.stdout


def test_a_node_without_the_key_or_of_another_cluster_never_joins(cluster):
    seed = daemon(cluster, "n1", "127.0.0.2", [])
    seed_address = f"127.0.0.2:{seed.ports['gossip']}"
    member = daemon(cluster, "n2", "127.0.0.3", [seed_address])
    wrong_key = cluster.workdir / "other.key"
    ensure_key_file(wrong_key)
    intruder = daemon(cluster, "intruder", "127.0.0.7", [seed_address], key_file=wrong_key)
    stranger = daemon(cluster, "stranger", "127.0.0.8", [seed_address], cluster_name="another-cluster")
    cluster.start(seed, member, intruder, stranger)
    wait_for(lambda: "n2" in members(seed), 60, "n2 to join")
    # The outsiders try to join and fail (the operator of an outsider is told why it stays alone)...
    for outsider in (intruder, stranger):
        wait_for(lambda o=outsider: "no seed answered" in o.log(), 60, f"{outsider.config_id} to report the failed join")
    # ...and meanwhile nothing of theirs got in, nor did they learn of anyone.
    for node in (seed, member):
        assert set(members(node)) == {"n1", "n2"}
    assert set(members(intruder)) == {"intruder"} and set(members(stranger)) == {"stranger"}


def test_members_needs_an_admin_key(cluster):
    node = daemon(cluster, "n1", "127.0.0.2", [])
    cluster.start(node)
    reply = httpx.get(f"{node.metrics_url}/v1/cluster/members", timeout=10)
    assert reply.status_code == 401 and reply.json()["error"]["type"] == "authentication_error"

"""Dissemination, anti-entropy, joins and partitions on the in-memory network (deterministic)."""

from __future__ import annotations

from cynode.gossip import MemberState, SimCluster, lan, local

ALIVE, DEAD = MemberState.ALIVE, MemberState.DEAD
KEY = (b"k" * 32,)


def test_a_metadata_update_reaches_all_nodes():
    cluster = SimCluster(100, lan(), seed=31, loss=0.01, keys=KEY, meta=lambda i: {"active": 0})
    cluster.run_for(5)
    cluster.update_meta(42, {"active": 7, "models": ["m-1"]})
    cluster.run_for(5)
    seen = [n.core.member("node-42").meta for n in cluster.nodes]
    assert all(dict(meta) == {"active": 7, "models": ["m-1"]} for meta in seen)


def test_nodes_joining_through_one_seed_all_learn_the_whole_cluster():
    cluster = SimCluster(30, lan(), seed=32, keys=KEY, primed=False)
    cluster.run_for(20)
    everyone = {f"node-{i}" for i in range(30)}
    assert all(n.join_results and n.join_results[0].ok for n in cluster.nodes[1:])
    assert all({name for name, s in view.items() if s is ALIVE} == everyone for view in cluster.views())


def test_a_partition_heals_and_the_views_converge():
    cluster = SimCluster(10, lan(), seed=33, keys=KEY)
    left, right = list(range(5)), list(range(5, 10))
    cluster.run_for(5)
    cluster.partition(left, right)
    cluster.run_for(60)
    # Each side has given up on the other.
    assert all(cluster.view(i)[f"node-{j}"] is DEAD for i in left for j in right)
    assert all(cluster.view(j)[f"node-{i}"] is DEAD for i in left for j in right)
    cluster.heal()
    cluster.run_for(120)
    everyone = {f"node-{i}": ALIVE for i in range(10)}
    assert cluster.converged(everyone)


def test_a_node_without_the_cluster_key_is_never_admitted():
    cluster = SimCluster(5, local(), seed=34, keys=KEY)
    intruder = cluster.add_node(name="intruder", keys=(b"x" * 32,))
    cluster.join(intruder.index, 0)
    cluster.run_for(30)
    assert intruder.join_results and not intruder.join_results[0].ok
    assert all("intruder" not in cluster.view(i) for i in range(5))
    assert cluster.nodes[0].core.stats["dropped_decrypt"] >= 1


def test_two_clusters_on_one_network_never_merge():
    cluster = SimCluster(5, local(), seed=35, cluster="blue")
    green = [cluster.add_node(name=f"green-{i}", cluster="green") for i in range(3)]
    for node in green[1:]:
        cluster.join(node.index, green[0].index)
    cluster.join(green[0].index, 0)  # a misconfigured seed list pointing at the other cluster
    cluster.run_for(60)
    blue_names = {f"node-{i}" for i in range(5)}
    green_names = {n.name for n in green}
    assert all(set(cluster.view(i)) == blue_names for i in range(5))
    assert all(set(cluster.view(n.index)) == green_names for n in green)
    assert cluster.nodes[0].core.stats["dropped_label"] >= 1

"""Failure detection on the in-memory network in simulated time (deterministic seeds)."""

from __future__ import annotations

from cynode.gossip import SimCluster, lan

KEY = (b"k" * 32,)


class Recorder:
    """Every (time, observer, event kind, member) the cluster emits."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str, str]] = []

    def __call__(self, at, node, event) -> None:
        member = getattr(event, "member", None)
        if member is not None:
            self.events.append((round(at, 6), node.name, event.kind, member.id))

    def about(self, member: str, kind: str) -> list[tuple[float, str]]:
        return [(t, observer) for t, observer, k, m in self.events if m == member and k == kind]


def test_a_crashed_node_is_declared_dead_by_every_other_node():
    record = Recorder()
    cluster = SimCluster(20, lan(), seed=11, keys=KEY, on_event=record)
    cluster.run_for(10)
    cluster.crash(7)
    cluster.run_for(40)
    observers = {observer for _, observer in record.about("node-7", "dead")}
    assert observers == {f"node-{i}" for i in range(20)} - {"node-7"}
    assert all(view["node-7"] == "dead" for view in cluster.views())
    assert not [e for e in record.events if e[2] == "dead" and e[3] != "node-7"]


def test_a_gracefully_leaving_node_is_left_everywhere_not_dead():
    record = Recorder()
    cluster = SimCluster(20, lan(), seed=12, on_event=record)
    cluster.run_for(5)
    cluster.leave(4)
    cluster.run_for(5)
    cluster.crash(4)  # it stops after leaving, as a daemon would
    cluster.run_for(30)
    assert {o for _, o in record.about("node-4", "left")} >= {f"node-{i}" for i in range(20) if i != 4}
    assert not record.about("node-4", "dead")


def test_at_one_percent_loss_with_stalling_nodes_no_healthy_node_is_declared_dead():
    record = Recorder()
    cluster = SimCluster(50, lan(), seed=13, loss=0.01, keys=KEY, on_event=record)
    stalling = list(range(0, 50, 10))  # 10% of the nodes
    cluster.stall_randomly(stalling, every=20.0, duration=(0.5, 3.0), until=600.0)
    cluster.run_until(600.0)
    assert [e for e in record.events if e[2] == "dead"] == []
    # The run was hard enough to matter: stalled nodes were suspected, and refuted in time.
    suspected = {m for _, _, kind, m in record.events if kind == "suspect"}
    assert suspected & {f"node-{i}" for i in stalling}
    assert sum(n.core.stats["refutes"] for n in cluster.nodes) > 0


def test_a_stall_longer_than_the_suspicion_timeout_is_indistinguishable_from_death():
    record = Recorder()
    cluster = SimCluster(10, lan(), seed=14, on_event=record)
    cluster.run_for(5)
    cluster.pause(3, 60.0)
    cluster.run_for(120)
    assert record.about("node-3", "dead"), "stalled past every timeout: declared dead"
    # Once it runs again it hears that, refutes, and is welcomed back.
    assert all(view["node-3"] == "alive" for view in cluster.views())
    assert record.about("node-3", "joined")


def test_the_same_seed_gives_the_same_run():
    def run(seed: int) -> list:
        record = Recorder()
        cluster = SimCluster(15, lan(), seed=seed, loss=0.05, on_event=record)
        cluster.run_for(5)
        cluster.crash(2)
        cluster.run_for(30)
        return record.events

    assert run(21) == run(21)
    assert run(21) != run(22)

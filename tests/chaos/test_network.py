"""Network faults aimed at the leader: it runs in a network namespace of its own, joined by a veth
pair (tests/chaos/netns.py); everything else, Redis included, stays outside.

- a partition of the leader under load: a standby leads within seconds, no accepted request is
  lost or run twice, every answer equals its reference, and the healed node rejoins as a standby;
- a slow, congested link to the leader (tbf, 1 Mbit/s): no hand-over, nothing lost;
- packet loss with delay (netem): only where the kernel has sch_netem; skipped, saying so, elsewhere.
"""

from __future__ import annotations

import time

import pytest

import netns
from chaos_records import keep
from daemon_harness import wait_for
from redis_harness import RedisServer
from runner import ChaosCluster
from scenarios import assert_invariants, references, run
from verdict import Fault

_why_not = netns.supported()
pytestmark = pytest.mark.skipif(_why_not is not None, reason=f"no network namespaces here: {_why_not}")


@pytest.fixture(scope="module")
def split(tmp_path_factory, models_dir):
    workdir = tmp_path_factory.mktemp("network")
    ns = netns.Namespace().create()
    server = None
    cluster = None
    try:
        server = RedisServer(workdir / "redis", args=("--bind", "127.0.0.1", ns.redis_host, "--protected-mode", "no")).start()
        url = f"redis://{ns.redis_host}:{server.port}/0"
        cluster = ChaosCluster(workdir / "cluster", url, models_dir, hosts=ns.outside_host)
        workers = [cluster.worker("w0"), cluster.worker("w1")]
        inside = cluster.coordinator("c0", workers, placement={"host": ns.inside, "launcher": ns.launcher},
                                     task_queue={"lease_ttl": "4s"})
        cluster.start(*workers, inside)
        assert cluster.leader_node() is inside
        cluster.coordinator("c1", workers, task_queue={"lease_ttl": "4s"})
        gateway = cluster.gateway("g0")
        cluster.start()
        model = cluster.model(gateway)
        cluster.wait_serving(gateway, model)
        yield cluster, ns, model, references(gateway, model)
    finally:
        if cluster is not None:
            cluster.stop()
        if server is not None:
            server.stop()
        ns.destroy()


def _keep(name, records, verdict, faults, **extra) -> dict:
    summary = {**verdict.summary(), **extra}
    print(f"{name}:", summary)
    keep(name, {"summary": summary, "faults": [f.__dict__ for f in faults], "records": [r.as_dict() for r in records]})
    return summary


@pytest.mark.timeout(200)
def test_a_slow_congested_link_to_the_leader_causes_no_hand_over_and_loses_nothing(split):
    cluster, ns, model, refs = split
    leader = cluster.leader()["id"]

    def slow_link() -> list[Fault]:
        fault = Fault("leader link 1 Mbit/s (tbf)", time.monotonic())
        ns.shape(rate="1mbit", latency="200ms")
        time.sleep(6)
        ns.unshape()
        fault.healed = time.monotonic()
        return [fault]

    records, verdict, faults = run(cluster, model, refs, slow_link, rate=6.0, prefix="sl")
    _keep("fault_slow_leader_link", records, verdict, faults)
    assert_invariants(verdict)
    assert not verdict.failures, verdict.failures[:5]
    assert cluster.leader()["id"] == leader, "a slow link caused a hand-over"


@pytest.mark.timeout(200)
def test_packet_loss_to_the_leader_causes_no_hand_over_and_loses_nothing(split):
    cluster, ns, model, refs = split
    if not ns.netem_available():
        pytest.skip("this kernel has no sch_netem (tc qdisc netem: unknown qdisc kind); loss and delay cannot be injected")
    leader = cluster.leader()["id"]

    def lossy() -> list[Fault]:
        fault = Fault("leader link 1% loss, 20 ms delay (netem)", time.monotonic())
        ns.lossy("1%", "20ms")
        time.sleep(8)
        ns.unshape()
        fault.healed = time.monotonic()
        return [fault]

    records, verdict, faults = run(cluster, model, refs, lossy, rate=6.0, prefix="pl")
    _keep("fault_lossy_leader_link", records, verdict, faults)
    assert_invariants(verdict, allow_retries=True)
    assert cluster.leader()["id"] == leader, "1% packet loss caused a hand-over"


@pytest.mark.timeout(240)
def test_a_partitioned_leader_is_replaced_within_seconds_and_nothing_accepted_is_lost(split):
    cluster, ns, model, refs = split
    wait_for(lambda: cluster.leader() and cluster.leader()["id"] == "c0", 30, "c0 (inside the namespace) to lead")
    took: list[float] = []

    def partition() -> list[Fault]:
        fault = Fault("partition of the leader (veth down)", time.monotonic())
        ns.partition()
        info = wait_for(lambda: (i := cluster.leader()) and i["id"] != "c0" and i, 15, "a leader outside the partition")
        took.append(time.monotonic() - fault.at)
        time.sleep(3)
        ns.heal()
        fault.healed = time.monotonic()
        assert info["id"] == "c1"
        return [fault]

    records, verdict, faults = run(cluster, model, refs, partition, rate=6.0, after=6.0, prefix="np")
    _keep("fault_partitioned_leader", records, verdict, faults, new_leader_after_s=round(took[0], 2))
    assert_invariants(verdict, allow_retries=True)
    assert took[0] <= 4.0, f"the partitioned leader was replaced after {took[0]:.2f}s"
    assert cluster.leader()["id"] == "c1", "the healed node took the lead back"

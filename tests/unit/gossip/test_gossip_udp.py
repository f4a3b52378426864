"""The real UDP + TCP transport, in process, on 127.0.0.1 free ports, with a shared cluster key."""

from __future__ import annotations

import asyncio
import os

import pytest

from cynode.gossip import GossipNode, JoinError, Keyring, UdpTransport, local

# Quicker than `local` so the test stays short, still far above loopback round trips.
FAST = local().with_(probe_interval=0.5, probe_timeout=0.25, gossip_interval=0.05, suspicion_mult=3)
KEY = os.urandom(32)


def udp_node(name: str, *, key: bytes = KEY, cluster: str = "udp-test") -> GossipNode:
    return GossipNode(name, UdpTransport("127.0.0.1:0"), config=FAST, cluster=cluster, keyring=Keyring([key]),
                      meta={"roles": ["worker"], "name": name})


def seed_of(node: GossipNode) -> str:
    return f"127.0.0.1:{node.transport.address[1]}"


async def eventually(condition, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def alive_names(node: GossipNode) -> set[str]:
    return {m.id for m in node.members() if m.state == "alive"}


async def test_three_nodes_find_each_other_from_one_seed_and_notice_a_crash():
    nodes = [udp_node(f"udp-{i}") for i in range(3)]
    for node in nodes:
        await node.start()
    try:
        for node in nodes[1:]:
            assert await node.join([seed_of(nodes[0])]) == 1
        await eventually(lambda: all(alive_names(n) == {"udp-0", "udp-1", "udp-2"} for n in nodes))
        assert nodes[2].member("udp-1").meta["roles"] == ["worker"]

        await nodes[2].stop()  # abrupt: no leave message
        await eventually(lambda: all(n.member("udp-2").state == "dead" for n in nodes[:2]))
    finally:
        for node in nodes:
            await node.stop()


async def test_strangers_without_the_key_or_of_another_cluster_never_appear():
    members = [udp_node("member-0"), udp_node("member-1")]
    wrong_key = udp_node("intruder", key=os.urandom(32))
    other_cluster = udp_node("neighbour", cluster="someone-else")
    for node in [*members, wrong_key, other_cluster]:
        await node.start()
    try:
        await members[1].join([seed_of(members[0])])
        for stranger in (wrong_key, other_cluster):
            with pytest.raises(JoinError):
                await stranger.join([seed_of(members[0]), seed_of(members[1])], timeout=1.0, attempts=2)
        # Each stranger's join attempts reached the members (their joins timed out after that) and
        # were dropped: nothing of theirs got through, and they learnt of nobody.
        for member in members:
            assert {m.id for m in member.members()} == {"member-0", "member-1"}
        stats = members[0].stats()
        assert stats.get("dropped_decrypt", 0) >= 1
        assert stats.get("dropped_label", 0) >= 1
        assert {m.id for m in wrong_key.members()} == {"intruder"}
        assert {m.id for m in other_cluster.members()} == {"neighbour"}
    finally:
        for node in [*members, wrong_key, other_cluster]:
            await node.stop()

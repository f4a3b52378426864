"""`GossipNode`, the asyncio driver, over the in-memory network in real time (short runs)."""

from __future__ import annotations

import asyncio

import pytest

from cynode.gossip import (GossipError, GossipNode, JoinError, MemberJoined, MemberLeft, MemberUpdated, MetadataError,
                           MockNetwork, NameConflictError, UdpTransport, local)
from cynode.gossip.clock import AsyncioScheduler

FAST = local().with_(probe_interval=0.5, probe_timeout=0.2, gossip_interval=0.05)


def network() -> MockNetwork:
    return MockNetwork(AsyncioScheduler(asyncio.get_running_loop()), latency=0.0005, jitter=0.0005)


async def eventually(condition, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_subscribers_see_members_join_update_and_leave():
    net = network()
    nodes = [GossipNode(name, net.transport((name, 7946)), config=FAST, meta={"n": i})
             for i, name in enumerate(["a", "b", "c"])]
    for node in nodes:
        await node.start()
    events = nodes[0].subscribe()
    try:
        assert await nodes[1].join(["a:7946"]) == 1
        assert await nodes[2].join(["a"]) == 1
        await eventually(lambda: all(len(n.members()) == 3 for n in nodes))
        nodes[2].update_meta({"n": 2, "active": 1})
        await eventually(lambda: nodes[0].member("c").meta.get("active") == 1)
        await nodes[2].leave()
        seen = []
        async with asyncio.timeout(60):
            async for event in events:
                seen.append((event.kind, event.member.id))
                if isinstance(event, MemberLeft):
                    break
        assert ("joined", "b") in seen and ("joined", "c") in seen
        assert ("updated", "c") in seen
        assert seen[-1] == ("left", "c")
        assert nodes[1].member("c").state == "left"
    finally:
        events.close()
        for node in nodes:
            await node.stop()


async def test_listeners_are_called_with_typed_events():
    net = network()
    a, b = (GossipNode(n, net.transport((n, 7946)), config=FAST) for n in "ab")
    seen: list = []
    remove = a.add_listener(seen.append)
    await a.start()
    await b.start()
    try:
        await b.join(["a"])
        b.update_meta({"x": 1})
        await eventually(lambda: any(isinstance(e, MemberUpdated) and e.member.id == "b" for e in seen))
        assert isinstance(seen[0], MemberJoined) and seen[0].member.id == "a"
        remove()
    finally:
        await a.stop()
        await b.stop()


async def test_a_join_that_reaches_no_seed_retries_then_names_each_seed():
    net = network()
    lonely = GossipNode("lonely", net.transport(("lonely", 7946)), config=FAST)
    await lonely.start()
    try:
        with pytest.raises(JoinError) as caught:
            await lonely.join(["nobody:7946", "missing"], timeout=1.0, attempts=3)
        assert "nobody:7946" in str(caught.value) and "missing:7946" in str(caught.value)
        assert caught.value.retryable
    finally:
        await lonely.stop()


async def test_joining_through_only_ourselves_is_a_cluster_of_one():
    net = network()
    node = GossipNode("solo", net.transport(("solo", 7946)), config=FAST)
    await node.start()
    try:
        assert await node.join(["solo:7946"]) == 0
    finally:
        await node.stop()


async def test_a_node_whose_name_is_taken_cannot_join():
    net = network()
    first = GossipNode("dup", net.transport(("host-1", 7946)), config=FAST)
    second = GossipNode("dup", net.transport(("host-2", 7946)), config=FAST)
    await first.start()
    await second.start()
    try:
        with pytest.raises(NameConflictError) as caught:
            await second.join(["host-1"])
        assert "host-1:7946" in str(caught.value) and "another [node] id" in str(caught.value)
    finally:
        await first.stop()
        await second.stop()


async def test_metadata_that_cannot_be_published_fails_at_once():
    net = network()
    with pytest.raises(MetadataError):
        GossipNode("big", net.transport(("big", 7946)), meta={"blob": "x" * 5000})


async def test_a_wildcard_bind_needs_an_advertised_address():
    node = GossipNode("wild", UdpTransport("0.0.0.0:0"), config=FAST)
    with pytest.raises(GossipError, match="set \\[node\\] advertise"):
        await node.start()
    advertised = GossipNode("wild", UdpTransport("0.0.0.0:0"), config=FAST, advertise="localhost")
    await advertised.start()
    try:
        assert advertised.local.host == "127.0.0.1", "a host name is resolved once, at start"
        assert advertised.local.port == advertised.transport.address[1]
    finally:
        await advertised.stop()


async def test_bursts_of_metadata_changes_are_coalesced_into_one_broadcast():
    net = network()
    a, b = (GossipNode(n, net.transport((n, 7946)), config=FAST, meta_interval=0.3) for n in "ab")
    await a.start()
    await b.start()
    try:
        await b.join(["a"])
        b.update_meta({"active": 1})
        incarnation = b.local.incarnation
        for active in range(2, 30):
            b.update_meta({"active": active})
        assert b.local.incarnation == incarnation, "later calls wait for the interval"
        await eventually(lambda: a.member("b").meta.get("active") == 29)
        assert b.local.incarnation == incarnation + 1
        with pytest.raises(MetadataError):
            b.update_meta({"blob": "x" * 5000})
    finally:
        await a.stop()
        await b.stop()

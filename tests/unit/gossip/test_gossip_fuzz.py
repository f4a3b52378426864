"""Property tests (hypothesis) of the gossip decoder and the core behind it, fed what a stranger or a
broken member could send: raw bytes, and well-sealed packets (under the cluster key) whose msgpack
messages have any shape and any field values.

The properties: `handle_packet` / `handle_stream` never raise, whatever arrives; every address the
core then sends to or dials is one a socket can take (a port in 0-65535, a string host), since a
bad one would raise in the transport's sendto and stop the loop that sent it; and afterwards the
core still answers a genuine ping. Examples are bounded, so this runs in seconds.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cynode.gossip import SendPacket, StreamRequest
from cynode.gossip.codec import Codec, compound
from cynode.gossip.keyring import Keyring
from cynode.gossip.messages import Ack, MessageType, Ping
from gossip_testkit import CLUSTER, Harness, address_of

FUZZ = settings(max_examples=int(os.environ.get("CYNODE_FUZZ_EXAMPLES", "200")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
KEY = os.urandom(32)

wire_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
                | st.integers(min_value=-2, max_value=70000) | st.floats() | st.text(max_size=12)
                | st.binary(max_size=16) | st.sampled_from(["me", "a", "b", "127.0.0.1", "::1", ""]))
wire_values = st.recursive(wire_scalars, lambda inner: st.lists(inner, max_size=6)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=20)
messages = st.builds(lambda kind, fields: [kind, *fields],
                     st.sampled_from([int(t) for t in MessageType]) | st.integers(-1, 300),
                     st.lists(wire_values, max_size=8))
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.integers(min_value=-2, max_value=70000)
names = st.text(max_size=8) | st.sampled_from(["me", "a", "b", "new"])
hosts = st.sampled_from(["127.0.0.1", "10.0.0.9", "::1", "", "not an ip", "a.test"]) | st.text(max_size=8)
# Right types, any values: these get past the decoder into the membership and the prober.
typed = st.one_of(
    st.tuples(st.just(int(MessageType.ALIVE)), ints, names, hosts, ints, st.binary(max_size=8), ints),
    st.tuples(st.just(int(MessageType.INDIRECT_PING)), ints, names, hosts, ints, st.booleans(), names),
    st.tuples(st.just(int(MessageType.SUSPECT)), ints, names, names),
    st.tuples(st.just(int(MessageType.DEAD)), ints, names, names),
    st.tuples(st.just(int(MessageType.PING)), ints, names, names),
    st.tuples(st.just(int(MessageType.ACK)), ints, st.binary(max_size=4)),
    st.tuples(st.just(int(MessageType.NACK)), ints),
).map(list)
member_state = st.tuples(names, hosts, ints, ints, st.integers(-1, 5), st.binary(max_size=8)).map(list)
push_pull_states = st.lists(st.lists(wire_scalars, min_size=0, max_size=7) | member_state, max_size=5)
push_pulls = st.builds(lambda join, source, states: [int(MessageType.PUSH_PULL), join, source, states],
                       wire_scalars, wire_scalars, push_pull_states)


def packed(items: list) -> bytes | None:
    import msgpack

    try:
        return compound([msgpack.packb(item) for item in items])
    except (TypeError, ValueError, OverflowError):
        return None


def sendable(outputs: list) -> None:
    for out in outputs:
        if isinstance(out, (SendPacket, StreamRequest)):
            host, port = out.address
            assert isinstance(host, str) and isinstance(port, int) and not isinstance(port, bool), out.address
            assert 0 <= port <= 65535, f"the core would send to port {port}"


def still_answers(harness: Harness) -> None:
    out = harness.core.handle_packet(address_of("a"), harness.packet(Ping(424242, "me", "a")))
    assert any(isinstance(m, Ack) and m.seq == 424242 for _, m in harness.messages(Ack, out))


def run_everything(harness: Harness) -> None:
    """Let timers fire (probes, gossip, push/pull) over what was learnt, checking what they send."""
    sendable(harness.run_for(30.0))


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_at_the_udp_and_tcp_handlers_are_dropped_quietly(data):
    harness = Harness(keyring=Keyring([KEY]))
    sendable(harness.core.handle_packet(address_of("a"), data))
    reply, out = harness.core.handle_stream(address_of("a"), data)
    assert reply is None
    sendable(out)
    still_answers(harness)


@FUZZ
@given(st.lists(messages | typed | push_pulls, min_size=1, max_size=6))
def test_sealed_packets_of_any_shape_never_raise_and_never_make_the_core_send_somewhere_impossible(items):
    payload = packed(items)
    if payload is None:
        return
    harness = Harness(keyring=Keyring([KEY]))
    codec = Codec(CLUSTER, Keyring([KEY]))
    sendable(harness.core.handle_packet(address_of("b"), codec.seal(payload)))
    reply, out = harness.core.handle_stream(address_of("b"), codec.seal(payload))
    sendable(out)
    run_everything(harness)
    still_answers(harness)


@FUZZ
@given(st.lists(messages | typed | push_pulls, min_size=1, max_size=3))
def test_a_garbled_push_pull_answer_or_join_reply_never_raises(items):
    payload = packed(items)
    if payload is None:
        return
    harness = Harness(keyring=Keyring([KEY]))
    out = harness.core.join(address_of("z"))
    (request,) = [o for o in out if isinstance(o, StreamRequest)]
    sendable(harness.core.handle_stream_reply(request.token, Codec(CLUSTER, Keyring([KEY])).seal(payload)))
    run_everything(harness)
    still_answers(harness)


def test_found_by_the_fuzzer_a_member_announced_at_an_impossible_port_is_dropped():
    """Before: the core took it and probed port -1, and the transport's sendto would raise."""
    import msgpack

    harness = Harness(keyring=Keyring([KEY]))
    codec = Codec(CLUSTER, Keyring([KEY]))
    for port in (-1, 65536, 2**40):
        harness.core.handle_packet(address_of("b"), codec.seal(compound([msgpack.packb(
            [int(MessageType.ALIVE), 1, f"new-{port}", "127.0.0.1", port, b"", 1])])))
        assert harness.core.member(f"new-{port}") is None
    assert harness.core.stats["dropped_malformed"] == 3
    sendable(harness.run_for(30.0))

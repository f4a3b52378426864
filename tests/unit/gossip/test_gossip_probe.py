"""The failure detector: direct, indirect and TCP probes, nacks, local health, and relaying."""

from __future__ import annotations

from cynode.gossip import lan
from cynode.gossip.messages import Ack, IndirectPing, Nack, Ping, Suspect
from gossip_testkit import Harness, address_of


def first_probe(h: Harness) -> tuple[str, int, float]:
    """Run until the core pings someone; returns (target, seq, time sent)."""
    for _ in range(1000):
        out = h.run_until(h.core.next_deadline())
        pings = h.messages(Ping, out)
        if pings:
            _, ping = pings[0]
            return ping.target, ping.seq, h.now
    raise AssertionError("no probe was sent")


def test_every_member_is_probed_once_per_round():
    h = Harness()
    targets = []
    for _ in range(4):
        target, seq, _ = first_probe(h)
        h.feed(Ack(seq), source=target)
        targets.append(target)
    assert sorted(targets) == ["a", "b", "c", "d"]


def test_an_answered_probe_leaves_everyone_alive_and_healthy():
    h = Harness()
    target, seq, _ = first_probe(h)
    h.feed(Ack(seq), source=target)
    h.run_for(0.99)
    assert h.state(target) == "alive"
    assert h.core.health_score == 0
    assert not h.messages(IndirectPing)


def test_a_silent_member_is_probed_indirectly_and_over_tcp_then_suspected():
    h = Harness()
    target, seq, sent = first_probe(h)
    out = h.run_until(sent + 0.5)
    relays = h.messages(IndirectPing, out)
    assert len(relays) == 3
    assert {addr for addr, _ in relays} <= {address_of(n) for n in "abcd"} - {address_of(target)}
    assert all(m.target == target and m.seq == seq and m.nack for _, m in relays)
    tcp = h.streams(out)
    assert [s.address for s in tcp] == [address_of(target)]
    assert h.state(target) == "alive"
    h.run_until(sent + 1.0)
    assert h.state(target) == "suspect"


def test_an_ack_relayed_by_a_peer_keeps_the_member_alive():
    h = Harness()
    target, seq, sent = first_probe(h)
    out = h.run_until(sent + 0.5)
    relay, _ = h.messages(IndirectPing, out)[0]
    h.core.handle_packet(relay, h.packet(Ack(seq)))
    h.run_until(sent + 1.0)
    assert h.state(target) == "alive"


def test_an_ack_over_tcp_keeps_the_member_alive():
    h = Harness()
    target, seq, sent = first_probe(h)
    out = h.run_until(sent + 0.5)
    (stream,) = h.streams(out)
    h.core.handle_stream_reply(stream.token, h.packet(Ack(seq)))
    h.run_until(sent + 1.0)
    assert h.state(target) == "alive"
    assert h.core.stats["tcp_ping_acks"] == 1


def test_missing_nacks_lower_our_own_health_and_received_nacks_spare_it():
    silent = Harness()
    _, _, sent = first_probe(silent)
    silent.run_until(sent + 1.0)
    assert silent.core.health_score == 3, "three relays asked, no nack from any: we are the suspect one"

    answered = Harness()
    target, seq, sent = first_probe(answered)
    out = answered.run_until(sent + 0.5)
    for relay, _ in answered.messages(IndirectPing, out):
        answered.core.handle_packet(relay, answered.packet(Nack(seq)))
    answered.run_until(sent + 1.0)
    assert answered.state(target) == "suspect"
    assert answered.core.health_score == 0, "relays answered: the target is the problem, not us"


def test_a_struggling_node_probes_less_often():
    healthy, struggling = Harness(), Harness()
    struggling.core.awareness.apply_delta(3)
    for h in (healthy, struggling):
        h.run_for(40, answer=True)
    count = lambda h: len(h.messages(Ping))
    assert 38 <= count(healthy) <= 41
    # Multiplier 4 at first; each answered probe then earns a point back (4 s, 3 s, 2 s, then 1 s).
    assert count(struggling) <= count(healthy) - 5
    assert struggling.core.health_score == 0


def test_probing_a_suspect_member_tells_it_so():
    h = Harness()
    target, seq, _ = first_probe(h)
    h.feed(Ack(seq), source=target)
    h.feed(*(Suspect(0, n, "x") for n in "abcd"))
    for _ in range(8):
        target, seq, _ = first_probe(h)
        if h.state(target) == "suspect":
            break
    packet_to_target = [msgs for addr, msgs in h.sent() if addr == address_of(target) and
                        any(isinstance(m, Ping) and m.seq == seq for m in msgs)][0]
    assert any(isinstance(m, Suspect) and m.node == target for m in packet_to_target)


def test_a_relay_pings_the_target_and_forwards_its_ack():
    h = Harness()
    out = h.feed(IndirectPing(77, "c", *address_of("c"), True, "a"), source="a")
    ((addr, ping),) = h.messages(Ping, out)
    assert addr == address_of("c") and ping.target == "c"
    out = h.feed(Ack(ping.seq), source="c")
    assert [(a, m.seq) for a, m in h.messages(Ack, out)] == [(address_of("a"), 77)]
    h.run_for(1)
    assert not h.messages(Nack)


def test_a_relay_nacks_when_the_target_stays_silent():
    h = Harness()
    h.feed(IndirectPing(77, "c", *address_of("c"), True, "a"), source="a")
    out = h.run_for(0.5)
    assert [(a, m.seq) for a, m in h.messages(Nack, out)] == [(address_of("a"), 77)]


def test_a_ping_for_another_node_name_is_not_answered():
    h = Harness()
    out = h.feed(Ping(5, "someone-else", "a"))
    assert not h.messages(Ack, out)
    out = h.feed(Ping(6, "me", "a"))
    assert [m.seq for _, m in h.messages(Ack, out)] == [6]


def test_a_probe_timeout_never_exceeds_the_period():
    config = lan()
    assert config.probe_timeout < config.probe_interval

"""The SWIM override rules, refutation and Lifeguard suspicion, stepped with a fake clock."""

from __future__ import annotations

import pytest

from cynode.gossip import MemberDead, MemberJoined, MemberLeft, MemberSuspect, MemberUpdated, lan
from cynode.gossip.messages import Alive, Dead, Suspect
from gossip_testkit import Harness, address_of


def alive(node: str, incarnation: int, meta: bytes = b"\x80") -> Alive:
    host, port = address_of(node)
    return Alive(incarnation, node, host, port, meta)


# ---------------------------------------------------------------- override rules


def test_a_higher_alive_refutes_a_suspicion():
    h = Harness()
    h.feed(Suspect(0, "a", "b"))
    assert h.state("a") == "suspect"
    h.feed(alive("a", 1))
    assert h.state("a") == "alive"
    assert h.incarnation("a") == 1
    assert h.events(MemberUpdated)[-1].member.id == "a"


def test_an_alive_at_the_same_incarnation_does_not_clear_a_suspicion():
    h = Harness()
    h.feed(Suspect(0, "a", "b"))
    h.feed(alive("a", 0))
    assert h.state("a") == "suspect"


def test_a_suspicion_at_the_current_incarnation_overrides_alive():
    h = Harness()
    h.feed(alive("a", 3))
    h.feed(Suspect(3, "a", "b"))
    assert h.state("a") == "suspect"
    assert [e.member.id for e in h.events(MemberSuspect)] == ["a"]


def test_a_suspicion_about_an_older_incarnation_is_ignored():
    h = Harness()
    h.feed(alive("a", 3))
    h.feed(Suspect(2, "a", "b"))
    assert h.state("a") == "alive"


def test_a_suspicion_at_a_newer_incarnation_starts_a_new_suspicion():
    h = Harness()
    h.feed(Suspect(0, "a", "b"))
    first_deadline = h.core.membership.nodes["a"].suspicion.deadline
    h.run_for(10)
    h.feed(Suspect(1, "a", "c"))
    record = h.core.membership.nodes["a"]
    assert record.incarnation == 1
    assert record.suspicion.start == h.now
    assert record.suspicion.deadline > first_deadline


def test_a_suspicion_about_a_dead_member_is_ignored():
    h = Harness()
    h.feed(Dead(0, "a", "b"))
    h.feed(Suspect(0, "a", "c"))
    assert h.state("a") == "dead"


def test_dead_overrides_alive_and_suspect_at_the_same_incarnation():
    h = Harness()
    h.feed(Dead(0, "a", "b"))
    h.feed(Suspect(0, "b", "c"))
    h.feed(Dead(0, "b", "c"))
    assert h.state("a") == "dead"
    assert h.state("b") == "dead"
    assert [e.member.id for e in h.events(MemberDead)] == ["a", "b"]


def test_dead_about_an_older_incarnation_is_ignored():
    h = Harness()
    h.feed(alive("a", 2))
    h.feed(Dead(1, "a", "b"))
    assert h.state("a") == "alive"


def test_only_a_higher_alive_brings_a_dead_member_back():
    h = Harness()
    h.feed(Dead(0, "a", "b"))
    h.feed(alive("a", 0))
    assert h.state("a") == "dead"
    h.feed(alive("a", 1))
    assert h.state("a") == "alive"
    assert h.events(MemberJoined)[-1].member.id == "a"


def test_a_member_announcing_its_own_death_has_left_rather_than_died():
    h = Harness()
    h.feed(Dead(0, "a", "a"))
    assert h.state("a") == "left"
    assert [e.member.id for e in h.events(MemberLeft)] == ["a"]
    assert not h.events(MemberDead)


def test_news_about_an_unknown_member_other_than_alive_is_ignored():
    h = Harness()
    h.feed(Suspect(5, "stranger", "b"), Dead(5, "stranger", "b"))
    assert h.core.member("stranger") is None


def test_an_alive_about_a_new_member_adds_it_and_passes_it_on():
    h = Harness()
    h.feed(alive("e", 0))
    assert h.state("e") == "alive"
    h.run_for(1)
    assert any(m.node == "e" for _, m in h.messages(Alive))


# ---------------------------------------------------------------- refutation


def test_a_node_refutes_a_suspicion_about_itself_with_a_higher_incarnation():
    h = Harness()
    h.feed(Suspect(5, "me", "a"))
    assert h.state("me") == "alive"
    assert h.incarnation("me") == 6
    assert h.core.health_score == 1, "being accused costs a point of local health"
    h.run_for(1)
    refutes = [m for _, m in h.messages(Alive) if m.node == "me"]
    assert refutes and refutes[0].incarnation == 6


def test_a_node_refutes_being_declared_dead():
    h = Harness()
    h.feed(Dead(0, "me", "a"))
    assert h.state("me") == "alive"
    assert h.incarnation("me") == 1


def test_a_node_refutes_a_stale_alive_about_itself():
    h = Harness(meta={"v": 2})
    h.feed(alive("me", 0, meta=b"\x81\xa1v\x01"))
    assert h.incarnation("me") == 1
    h.run_for(1)
    assert any(m.node == "me" and m.incarnation == 1 for _, m in h.messages(Alive))


def test_its_own_alive_coming_back_is_not_refuted():
    h = Harness()
    local = h.core.local
    h.feed(Alive(local.incarnation, "me", local.host, local.port, local.meta_bytes))
    assert h.incarnation("me") == 0
    assert h.core.health_score == 0


def test_a_leaving_node_does_not_refute_its_departure():
    h = Harness()
    h.core.leave()
    h.feed(Suspect(0, "me", "a"), Dead(0, "me", "a"))
    assert h.state("me") == "left"


# ---------------------------------------------------------------- Lifeguard suspicion timeouts
# Five members (me + a, b, c, d): min = 4 * max(1, log10 5) * 1 s = 4 s, max = 6 * min = 24 s,
# k = suspicion_mult - 2 = 2 confirmations wanted.


def test_an_unconfirmed_suspicion_runs_for_the_maximum_timeout():
    h = Harness()
    start = h.now
    h.feed(Suspect(0, "a", "b"))
    h.core.prober.stop()  # our own probes would add confirmations
    h.run_until(start + 23.9)
    assert h.state("a") == "suspect"
    h.run_until(start + 24.0)
    assert h.state("a") == "dead"


def test_each_independent_confirmation_shrinks_the_timeout():
    h = Harness()
    h.core.prober.stop()
    start = h.now
    h.feed(Suspect(0, "a", "b"))
    h.feed(Suspect(0, "a", "c"))
    # One of two confirmations: 24 - 20 * log(2) / log(3) = 11.38 s.
    assert h.core.membership.nodes["a"].suspicion.deadline == pytest.approx(start + 11.381, abs=0.01)
    h.feed(Suspect(0, "a", "d"))
    assert h.core.membership.nodes["a"].suspicion.deadline == pytest.approx(start + 4.0)
    h.run_until(start + 3.99)
    assert h.state("a") == "suspect"
    h.run_until(start + 4.0)
    assert h.state("a") == "dead"


def test_confirmations_from_the_accuser_or_twice_from_one_peer_do_not_count():
    h = Harness()
    h.feed(Suspect(0, "a", "b"))
    h.feed(Suspect(0, "a", "b"), Suspect(0, "a", "c"), Suspect(0, "a", "c"))
    assert h.core.membership.nodes["a"].suspicion.n == 1


def test_a_new_confirmation_is_passed_on_and_a_duplicate_is_not():
    h = Harness()
    h.feed(Suspect(0, "a", "b"))
    h.run_for(1)
    h.feed(Suspect(0, "a", "c"))
    assert h.core.queue.transmits("a") == 0, "the confirmation was queued afresh"
    h.run_for(1)
    sent = h.core.queue.transmits("a")
    h.feed(Suspect(0, "a", "c"))
    assert h.core.queue.transmits("a") == sent


def test_a_cluster_too_small_for_confirmations_uses_the_minimum_timeout():
    h = Harness(members=("a", "b"))
    h.core.prober.stop()
    start = h.now
    h.feed(Suspect(0, "a", "b"))
    # n = 3 gives min = 4 * log10(3)... clamped to 4 s; k = 0 because n - 2 < 2.
    h.run_until(start + 4.0)
    assert h.state("a") == "dead"


def test_a_refutation_cancels_the_pending_death():
    h = Harness()
    h.core.prober.stop()
    start = h.now
    h.feed(Suspect(0, "a", "b"))
    h.run_until(start + 10)
    h.feed(alive("a", 1))
    h.run_until(start + 60)
    assert h.state("a") == "alive"
    assert not h.events(MemberDead)


def test_the_suspicion_timeout_grows_with_the_cluster():
    config = lan()
    assert config.suspicion_min(10) == pytest.approx(4.0)
    assert config.suspicion_min(100) == pytest.approx(8.0)
    assert config.suspicion_min(1000) == pytest.approx(12.0)

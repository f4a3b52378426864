"""Piggybacked gossip, push/pull anti-entropy, joins, name conflicts, reaping and metadata."""

from __future__ import annotations

import random

import pytest

from cynode.gossip import (FakeClock, JoinResult, MemberJoined, Memberlist, MemberReaped, MemberUpdated, MetadataError,
                           NameConflict, lan)
from cynode.gossip.broadcast_queue import BroadcastQueue
from cynode.gossip.codec import META_MAX_BYTES, compound, decode_message, decode_payload, encode
from cynode.gossip.messages import Alive, Dead, Ping, PushPull, Suspect
from gossip_testkit import CLUSTER, Harness, address_of


# ---------------------------------------------------------------- the broadcast queue


def test_a_newer_message_about_a_member_replaces_the_queued_one():
    queue = BroadcastQueue(lambda: 10)
    finished = []
    queue.queue("a", b"suspect-a", on_done=lambda: finished.append("old"))
    queue.queue("a", b"alive-a")
    assert queue.get(0, 1000) == [b"alive-a"]
    assert finished == ["old"]


def test_fresh_messages_go_first_and_newest_first_among_equals():
    queue = BroadcastQueue(lambda: 10)
    one, two, three = b"1" * 10, b"2" * 10, b"3" * 10
    queue.queue("a", one)
    queue.get(0, 1000)
    queue.queue("b", two)
    queue.queue("c", three)
    assert queue.get(0, 20) == [three, two]
    four = b"4" * 10
    queue.queue("d", four)
    assert queue.get(0, 30) == [four, three, two], "never sent first, then the newest of those sent once"


def test_a_message_is_dropped_after_its_retransmit_limit():
    queue = BroadcastQueue(lambda: 3)
    done = []
    queue.queue("a", b"x", on_done=lambda: done.append(True))
    sends = sum(len(queue.get(0, 1000)) for _ in range(10))
    assert sends == 3 and done == [True] and len(queue) == 0


def test_only_messages_that_fit_are_taken():
    queue = BroadcastQueue(lambda: 10)
    queue.queue("big", b"x" * 100)
    queue.queue("small", b"y" * 10)
    assert queue.get(2, 50) == [b"y" * 10]
    assert queue.transmits("big") == 0


def test_the_queue_is_bounded_by_dropping_the_most_sent():
    queue = BroadcastQueue(lambda: 100, max_queued=3)
    queue.queue("old", b"o")
    queue.get(0, 100)
    for key in "abc":
        queue.queue(key, key.encode())
    assert len(queue) == 3 and queue.transmits("old") is None


def test_the_retransmit_limit_grows_with_log_n():
    config = lan()
    assert [config.retransmit_limit(n) for n in (1, 9, 10, 99, 100, 1000)] == [4, 4, 8, 8, 12, 16]


# ---------------------------------------------------------------- piggybacking and gossip rounds


def test_state_changes_ride_on_probes_until_their_retransmit_limit():
    h = Harness()
    h.feed(Suspect(0, "a", "b"))
    h.feed(Alive(1, "a", *address_of("a"), b"\x80"))  # refuted: only what is queued is counted
    h.outputs.clear()
    h.feed(Suspect(1, "a", "b"))
    h.run_for(60, answer=True)
    # (Probes of `a` also carry our own accusation to it: that is the buddy system, not gossip.)
    carried = [m for _, m in h.messages(Suspect) if m.node == "a" and m.accuser == "b"]
    assert len(carried) == lan().retransmit_limit(5)


def test_gossip_rounds_stay_quiet_without_news():
    h = Harness()
    h.run_for(10, answer=True)
    kinds = {type(m) for _, msgs in h.sent() for m in msgs}
    assert kinds <= {Ping}


def test_news_goes_out_within_one_gossip_interval_to_several_members():
    h = Harness()
    h.feed(Alive(0, "e", *address_of("e"), b"\x80"))
    out = h.run_for(0.2)
    receivers = {addr for addr, m in h.messages(Alive, out) if m.node == "e"}
    assert len(receivers) == 3


def test_recently_dead_members_still_receive_gossip():
    h = Harness(members=("a",))
    h.feed(Dead(0, "a", "x"))
    out = h.run_for(0.2)
    assert address_of("a") in {addr for addr, _ in h.sent(out)}


# ---------------------------------------------------------------- push/pull and join


def other_core(name: str, members=("me", "a", "b"), clock=None) -> Memberlist:
    core = Memberlist(name, address_of(name), config=lan(), cluster=CLUSTER, clock=clock or FakeClock(1000.0),
                      rng=random.Random(2))
    core.prime([(m, address_of(m), {}) for m in members])
    core.start()
    return core


def test_a_push_pull_answers_with_the_whole_table_then_merges_the_peers():
    h = Harness(members=("a", "b"))
    states = [["e", *address_of("e"), 0, 0, b"\x80"], ["a", *address_of("a"), 0, 2, b"\x80"]]
    request = h.packet(PushPull(False, "e", states))
    reply, out = h.core.handle_stream(address_of("e"), request)
    (answer,) = [decode_message(i) for i in decode_payload(h.codec.open(reply))]
    assert sorted(s[0] for s in answer.states) == ["a", "b", "me"]
    assert h.state("e") == "alive"
    assert h.state("a") == "suspect", "a peer's 'dead' is only a suspicion until we see it ourselves"
    assert [e.member.id for e in h.events(MemberJoined, out)] == ["e"]


def test_a_join_learns_the_seeds_table_and_reports_success():
    h = Harness(members=())
    seed = other_core("seed", members=("a", "b"))
    (request,) = h.streams(h.core.join(address_of("seed")))
    reply, _ = seed.handle_stream(address_of("me"), request.data)
    out = h.core.handle_stream_reply(request.token, reply)
    (result,) = [o for o in out if isinstance(o, JoinResult)]
    assert result.ok and result.address == address_of("seed")
    assert {m.id for m in h.core.members()} == {"me", "seed", "a", "b"}
    assert seed.member("me") is not None


def test_a_join_without_an_answer_says_why():
    h = Harness(members=())
    (request,) = h.streams(h.core.join(address_of("seed")))
    (result,) = [o for o in h.core.handle_stream_reply(request.token, None) if isinstance(o, JoinResult)]
    assert not result.ok and "no answer" in result.error


def test_a_join_that_finds_our_name_held_elsewhere_reports_a_conflict():
    h = Harness(members=())
    seed = other_core("seed", members=())
    seed.handle_packet(("x", 1), h.codec.seal(compound([encode(Alive(3, "me", "elsewhere", 7946, b"\x80"))])))
    (request,) = h.streams(h.core.join(address_of("seed")))
    reply, seed_out = seed.handle_stream(address_of("me"), request.data)
    assert [e.claimant for e in seed_out if isinstance(e, NameConflict)] == ["me.test:7946"]
    (result,) = [o for o in h.core.handle_stream_reply(request.token, reply) if isinstance(o, JoinResult)]
    assert result.conflict_holder == "elsewhere:7946"
    assert "name conflict" in result.error


def test_a_second_address_for_a_live_name_is_ignored_and_reported():
    h = Harness()
    out = h.feed(Alive(9, "a", "impostor", 7946, b"\x80"))
    assert h.core.member("a").address == "a.test:7946"
    (conflict,) = h.events(NameConflict, out)
    assert (conflict.holder, conflict.claimant) == ("a.test:7946", "impostor:7946")


def test_a_member_that_left_may_come_back_at_a_new_address():
    h = Harness()
    h.feed(Dead(0, "a", "a"))
    out = h.feed(Alive(0, "a", "new-home", 7946, b"\x80"))
    assert h.core.member("a").address == "new-home:7946"
    assert h.state("a") == "alive"
    assert h.events(MemberJoined, out)


# ---------------------------------------------------------------- reaping and reconnecting


def test_dead_members_are_forgotten_after_the_reconnect_timeout():
    h = Harness(config=lan().with_(reconnect_timeout=60.0, reap_interval=5.0))
    h.feed(Dead(0, "a", "b"))
    h.run_for(50)
    assert h.state("a") == "dead"
    out = h.run_for(20)
    assert h.core.member("a") is None
    assert [e.member.id for e in h.events(MemberReaped, out)] == ["a"]


def test_a_dead_member_is_offered_a_full_sync_so_partitions_can_heal():
    h = Harness(members=("a",), config=lan().with_(push_pull_interval=0))
    h.feed(Dead(0, "a", "x"))
    out = h.run_for(61)
    assert address_of("a") in {s.address for s in h.streams(out)}


# ---------------------------------------------------------------- metadata


def test_new_metadata_raises_the_incarnation_and_spreads():
    h = Harness(meta={"roles": ["worker"]})
    out = h.core.update_meta({"roles": ["worker"], "active": 3})
    assert h.incarnation("me") == 1
    assert dict(h.events(MemberUpdated, out)[0].member.meta) == {"roles": ["worker"], "active": 3}
    out = h.run_for(0.2)
    assert any(m.node == "me" and m.incarnation == 1 for _, m in h.messages(Alive, out))


def test_a_peer_sees_the_new_metadata_as_an_update():
    h = Harness()
    out = h.feed(Alive(1, "a", *address_of("a"), b"\x81\xa6active\x05"))
    (event,) = h.events(MemberUpdated, out)
    assert dict(event.member.meta) == {"active": 5}


def test_metadata_over_the_size_bound_is_refused_with_the_biggest_keys_named():
    h = Harness()
    with pytest.raises(MetadataError) as caught:
        h.core.update_meta({"models": ["m" * 60] * 20, "ok": 1})
    assert f"{META_MAX_BYTES}-byte limit" in str(caught.value)
    assert "'models'" in str(caught.value)


def test_metadata_must_be_a_msgpack_able_map_with_string_keys():
    h = Harness()
    with pytest.raises(MetadataError, match="keys must be strings"):
        h.core.update_meta({1: "x"})
    with pytest.raises(MetadataError, match="not msgpack"):
        h.core.update_meta({"x": object()})


def test_a_graceful_leave_is_sent_and_then_done():
    h = Harness()
    h.core.leave()
    assert not h.core.leave_done
    h.run_for(5)
    assert h.core.leave_done
    assert any(m.node == "me" and m.accuser == "me" for _, m in h.messages(Dead))

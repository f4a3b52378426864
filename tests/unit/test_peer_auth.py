"""Peer authentication of gRPC calls, stepped with a fake clock."""

from __future__ import annotations

import secrets

from fakes import FakeClock
from cynode.peer_auth import MAX_SKEW_MS, PeerAuth




def test_a_signature_from_the_same_key_verifies():
    key = secrets.token_bytes(32)
    clock = FakeClock()
    assert PeerAuth((key,), clock).verify(PeerAuth((key,), clock).sign("/cynode.v1.Worker/Predict"), "/cynode.v1.Worker/Predict")


def test_a_signature_is_bound_to_its_method():
    auth = PeerAuth((secrets.token_bytes(32),), FakeClock())
    assert not auth.verify(auth.sign("/cynode.v1.Worker/Health"), "/cynode.v1.Worker/Predict")


def test_another_clusters_key_is_refused():
    clock = FakeClock()
    token = PeerAuth((secrets.token_bytes(32),), clock).sign("/m")
    assert not PeerAuth((secrets.token_bytes(32),), clock).verify(token, "/m")


def test_a_stale_signature_is_refused():
    key, clock = secrets.token_bytes(32), FakeClock()
    token = PeerAuth((key,), clock).sign("/m")
    clock.now += MAX_SKEW_MS / 1000 + 1
    assert not PeerAuth((key,), clock).verify(token, "/m")


def test_rotation_accepts_every_key_of_the_ring_but_signs_with_the_first():
    old, new, clock = secrets.token_bytes(32), secrets.token_bytes(32), FakeClock()
    rotating = PeerAuth((new, old), clock)
    assert rotating.verify(PeerAuth((old,), clock).sign("/m"), "/m")
    assert PeerAuth((new,), clock).verify(rotating.sign("/m"), "/m")
    assert not PeerAuth((old,), clock).verify(rotating.sign("/m"), "/m")


def test_garbage_tokens_are_refused():
    auth = PeerAuth((secrets.token_bytes(32),), FakeClock())
    for token in (None, "", "abc", "1.2", "x.y.z", "1.2.3.4"):
        assert not auth.verify(token, "/m")

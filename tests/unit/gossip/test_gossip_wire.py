"""Bytes on the wire: cluster labels, AES-GCM with key rotation, versions and malformed input."""

from __future__ import annotations

import os

import pytest

from cynode.gossip import Keyring, WireError
from cynode.gossip.codec import Codec, compound, decode_message, decode_payload, encode
from cynode.gossip.messages import Alive, Dead, IndirectPing, Nack, Ping, PushPull, Suspect
from gossip_testkit import Harness

K1, K2 = os.urandom(32), os.urandom(32)


def seal(codec: Codec, *messages) -> bytes:
    return codec.seal(compound([encode(m) for m in messages]))


def test_every_message_survives_a_round_trip():
    codec = Codec("c", Keyring([K1]))
    messages = [Ping(1, "a", "b"), IndirectPing(2, "a", "10.0.0.1", 7946, True, "b"), Nack(3),
                Suspect(4, "a", "b"), Alive(5, "a", "::1", 7946, b"\x80"), Dead(6, "a", "a"),
                PushPull(True, "b", [["a", "h", 1, 2, 0, b"\x80"]])]
    items = decode_payload(codec.open(seal(codec, *messages)))
    assert [decode_message(i) for i in items] == messages


def test_a_ping_is_small_even_encrypted():
    codec = Codec("default", Keyring([K1]))
    assert len(seal(codec, Ping(123456, "edge-01", "edge-02"))) < 80


def test_a_packet_of_another_cluster_is_refused_by_name():
    ours, theirs = Codec("prod"), Codec("staging")
    with pytest.raises(WireError) as caught:
        ours.open(seal(theirs, Ping(1, "a", "b")))
    assert caught.value.reason == "label" and "'staging'" in str(caught.value)


def test_a_node_without_the_key_can_neither_read_nor_be_read():
    keyed, stranger = Codec("c", Keyring([K1])), Codec("c", Keyring([K2]))
    with pytest.raises(WireError) as caught:
        keyed.open(seal(stranger, Ping(1, "a", "b")))
    assert caught.value.reason == "decrypt"
    plain = Codec("c")
    with pytest.raises(WireError) as caught:
        keyed.open(seal(plain, Ping(1, "a", "b")))
    assert caught.value.reason == "plaintext"
    with pytest.raises(WireError) as caught:
        plain.open(seal(keyed, Ping(1, "a", "b")))
    assert caught.value.reason == "encrypted"


def test_the_ciphertext_does_not_show_the_message():
    packet = seal(Codec("c", Keyring([K1])), Alive(1, "secret-node-name", "10.9.8.7", 7946, b"\x80"))
    assert b"secret-node-name" not in packet and b"10.9.8.7" not in packet


def test_a_packet_relabelled_for_another_cluster_fails_authentication():
    blue, green = Codec("blue", Keyring([K1])), Codec("gren", Keyring([K1]))
    packet = seal(blue, Ping(1, "a", "b"))
    relabelled = green.header + packet[len(blue.header):]
    with pytest.raises(WireError) as caught:
        green.open(relabelled)
    assert caught.value.reason == "decrypt"


def test_keys_rotate_without_splitting_the_cluster():
    old = Codec("c", Keyring([K1]))
    step1 = Codec("c", Keyring([K1, K2]))  # new key added second: still sends with the old one
    step2 = Codec("c", Keyring([K2, K1]))  # new key moved first: sends with the new one
    for sender, reader in [(old, step1), (step1, old), (step2, step1), (step1, step2)]:
        assert decode_payload(reader.open(seal(sender, Nack(9))))
    with pytest.raises(WireError):
        old.open(seal(step2, Nack(9)))


def test_a_frame_of_an_unknown_wire_version_is_refused():
    codec = Codec("c")
    packet = bytearray(seal(codec, Nack(1)))
    packet[0] = 9
    with pytest.raises(WireError) as caught:
        codec.open(bytes(packet))
    assert caught.value.reason == "version"


def test_garbage_is_counted_not_fatal():
    h = Harness()
    h.core.handle_packet(("x", 1), b"\x01")
    h.core.handle_packet(("x", 1), h.codec.header + b"\xc1\xc1")
    h.core.handle_packet(("x", 1), h.codec.seal(compound([b"\x93\x05\xa1a\x01"])))  # suspect, wrong types
    h.core.handle_packet(("x", 1), h.codec.seal(compound([b"\x91\x63"])))  # unknown message type 99
    assert h.core.stats["dropped_malformed"] == 4
    assert h.core.stats["packets_received"] == 4


def test_a_core_drops_other_clusters_and_strangers_and_counts_why():
    h = Harness(keyring=Keyring([K1]))
    h.core.handle_packet(("x", 1), seal(Codec("other", Keyring([K1])), Suspect(0, "a", "x")))
    h.core.handle_packet(("x", 1), seal(Codec("test", Keyring([K2])), Suspect(0, "a", "x")))
    assert h.state("a") == "alive"
    assert h.core.stats["dropped_label"] == 1 and h.core.stats["dropped_decrypt"] == 1


def test_the_cluster_name_must_fit_the_label():
    with pytest.raises(ValueError, match="at most 128"):
        Codec("x" * 129)
    with pytest.raises(ValueError, match="must not be empty"):
        Codec("")


def test_a_keyring_needs_aes_sized_keys():
    with pytest.raises(ValueError, match="16, 24 or 32"):
        Keyring([b"short"])
    with pytest.raises(ValueError, match="at least one key"):
        Keyring([])

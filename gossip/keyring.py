"""AES-GCM encryption of gossip packets with a keyring that allows rotation.

The first key encrypts what this node sends; every key is tried on what it receives. Rotating the
cluster key is therefore three rolling restarts, none of which splits the cluster: add the new key
second everywhere, move it first everywhere, drop the old one (node/cluster_key.py reads the file).

Each packet gets a fresh random 96-bit nonce. The caller passes associated data (the wire header
with its version and cluster label), so a packet cannot be replayed into another cluster or have
its header rewritten without failing authentication.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES
KEY_SIZES = (16, 24, 32)


class DecryptError(Exception):
    """No key of the ring opens this packet: another cluster's key, or tampered data."""


class Keyring:
    __slots__ = ("_ciphers", "_keys")

    def __init__(self, keys: Sequence[bytes]) -> None:
        self.replace(keys)

    def replace(self, keys: Sequence[bytes]) -> None:
        """Swap in a new set of keys (a reload of the key file), in place: every codec holding this
        keyring uses the new keys from its next packet. A bad set raises and leaves the old one."""
        if not keys:
            raise ValueError("a keyring needs at least one key")
        for index, key in enumerate(keys):
            if len(key) not in KEY_SIZES:
                raise ValueError(f"key {index + 1} is {len(key)} bytes; AES-GCM keys are 16, 24 or 32 bytes")
        new_keys = tuple(bytes(k) for k in keys)
        self._keys, self._ciphers = new_keys, tuple(AESGCM(k) for k in new_keys)

    @property
    def primary(self) -> bytes:
        """The key used to encrypt."""
        return self._keys[0]

    @property
    def keys(self) -> tuple[bytes, ...]:
        return self._keys

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        """nonce || ciphertext || tag, under the primary key."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._ciphers[0].encrypt(nonce, plaintext, associated)

    def decrypt(self, sealed: bytes, associated: bytes) -> bytes:
        """The plaintext, trying every key of the ring; raises `DecryptError`."""
        if len(sealed) < OVERHEAD:
            raise DecryptError("packet shorter than nonce and tag")
        nonce = sealed[:NONCE_BYTES]
        body = sealed[NONCE_BYTES:]
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, body, associated)
            except InvalidTag:
                continue
        raise DecryptError("no key of the keyring opens this packet")

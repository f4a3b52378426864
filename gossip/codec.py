"""Bytes on the wire: framing, cluster label, encryption, compound packets and metadata.

Every UDP packet and every TCP frame is

    version:u8 | flags:u8 | label_len:u8 | label | body

where `label` is the cluster name in clear (so a node drops another cluster's traffic before doing
any work, and can say why in its log) and `body` is either the payload or, when the cluster has a
keyring, `nonce | AES-GCM(payload) | tag` with the whole header as associated data: a packet moved
to another cluster, or with its label rewritten, fails authentication. The payload is one msgpack
array of messages (see messages.py): the first is the packet's own message, the rest are
piggybacked state changes. Broadcasts are kept already encoded, so a compound packet is built by
concatenation under an array header, never by re-encoding.

TCP frames carry a 4-byte big-endian length in front (udp_transport.py and mock_network.py frame
them); the codec sees whole frames only.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import msgpack

from .errors import MetadataError
from .keyring import OVERHEAD as ENCRYPT_OVERHEAD
from .keyring import DecryptError, Keyring
from .messages import DECODERS, MalformedMessage, Message

WIRE_VERSION = 1
FLAG_ENCRYPTED = 0x01
MAX_LABEL_BYTES = 128
META_MAX_BYTES = 1024
# Array header of a compound payload: at most 3 bytes (0xdc + u16).
COMPOUND_HEADER_OVERHEAD = 3
# A stream frame larger than this is refused before it is read, so a stranger cannot make us buffer
# much: a 1000-member push/pull with 1 KiB of metadata each is ~1.1 MiB, 10k members ~11 MiB.
MAX_STREAM_BYTES = 16 * 1024 * 1024

_packb = msgpack.packb


class WireError(Exception):
    """A packet this node will not read. `reason` is a short tag for counters and logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(message: Message) -> bytes:
    return _packb(message.to_wire())


def array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + struct.pack(">H", count)
    return b"\xdd" + struct.pack(">I", count)


def compound(encoded: list[bytes]) -> bytes:
    """One payload holding already-encoded messages."""
    return array_header(len(encoded)) + b"".join(encoded)


def decode_payload(payload: bytes) -> list[list]:
    """The raw message arrays of a payload; raises `WireError("malformed")`."""
    try:
        items = msgpack.unpackb(payload, raw=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise WireError("malformed", f"not msgpack ({exc.__class__.__name__})") from None
    if not isinstance(items, list):
        raise WireError("malformed", "payload is not a list of messages")
    return items


def decode_message(item: list) -> Message:
    """One typed message from its wire array; raises `WireError("malformed")`."""
    try:
        decoder = DECODERS.get(item[0]) if type(item) is list else None
    except (IndexError, TypeError):
        decoder = None
    if decoder is None:
        raise WireError("malformed", f"not a known message: {str(item)[:40]}")
    try:
        return decoder(item)
    except (MalformedMessage, IndexError, TypeError) as exc:
        raise WireError("malformed", f"message type {item[0]}: {exc}") from None


class Codec:
    """Seals payloads into frames and opens frames for one cluster name and keyring."""

    __slots__ = ("label", "keyring", "header", "overhead")

    def __init__(self, cluster: str, keyring: Keyring | None = None) -> None:
        label = cluster.encode()
        if not label:
            raise ValueError("the cluster name must not be empty")
        if len(label) > MAX_LABEL_BYTES:
            raise ValueError(f"cluster name is {len(label)} bytes; at most {MAX_LABEL_BYTES} fit the wire label")
        self.label = label
        self.keyring = keyring
        flags = FLAG_ENCRYPTED if keyring is not None else 0
        self.header = bytes((WIRE_VERSION, flags, len(label))) + label
        # Bytes a frame adds around its payload.
        self.overhead = len(self.header) + (ENCRYPT_OVERHEAD if keyring is not None else 0)

    def seal(self, payload: bytes) -> bytes:
        if self.keyring is not None:
            return self.header + self.keyring.encrypt(payload, self.header)
        return self.header + payload

    def open(self, frame: bytes) -> bytes:
        """The payload of `frame`; raises `WireError` naming why the frame is not ours."""
        end = len(self.header)
        if frame[:end] != self.header:
            self._diagnose(frame)
        if self.keyring is None:
            return frame[end:]
        try:
            return self.keyring.decrypt(frame[end:], self.header)
        except DecryptError as exc:
            raise WireError("decrypt", str(exc)) from None

    def _diagnose(self, frame: bytes) -> None:
        if len(frame) < 3:
            raise WireError("malformed", f"frame of {len(frame)} bytes")
        if frame[0] != WIRE_VERSION:
            raise WireError("version", f"wire version {frame[0]} (this node speaks {WIRE_VERSION})")
        label = frame[3:3 + frame[2]]
        if label != self.label:
            raise WireError("label", f"packet of cluster {label.decode(errors='replace')!r}")
        if self.keyring is not None:
            raise WireError("plaintext", "unencrypted packet, but this cluster requires its key")
        raise WireError("encrypted", "encrypted packet, but this node has no cluster key")


def encode_meta(meta: Mapping[str, Any], limit: int = META_MAX_BYTES) -> bytes:
    """Metadata as msgpack, or `MetadataError` saying what is wrong with it."""
    if not isinstance(meta, Mapping):
        raise MetadataError(f"node metadata must be a mapping, got {type(meta).__name__}")
    bad_keys = [k for k in meta if not isinstance(k, str)]
    if bad_keys:
        raise MetadataError(f"node metadata keys must be strings, got {bad_keys[0]!r}")
    try:
        data = _packb(dict(meta))
    except (TypeError, ValueError, OverflowError) as exc:
        raise MetadataError(f"node metadata is not msgpack-serialisable: {exc}") from None
    if len(data) > limit:
        sizes = sorted(((len(_packb(v)), k) for k, v in meta.items()), reverse=True)[:3]
        biggest = ", ".join(f"{k!r} {n} B" for n, k in sizes)
        raise MetadataError(
            f"node metadata is {len(data)} bytes encoded, over the {limit}-byte limit "
            f"(largest keys: {biggest}); publish less, e.g. counts instead of lists"
        )
    return data


def decode_meta(data: bytes) -> dict[str, Any]:
    """Metadata received from a peer; a peer's undecodable metadata reads as empty."""
    if not data:
        return {}
    try:
        meta = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return {}
    return meta if isinstance(meta, dict) else {}

"""The gossip messages, one small class each, and their positional wire form.

On the wire every message is a msgpack array `[type, field, field, ...]`: positional fields keep
packets small (a ping is ~20 bytes before framing). A newer protocol version may append fields;
older readers ignore what they do not know, so additions need no version bump, removals do.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# The member-protocol version we speak; carried in `Alive` so mixed versions can be detected.
PROTOCOL_VERSION = 1


class MessageType(IntEnum):
    PING = 1
    INDIRECT_PING = 2
    ACK = 3
    NACK = 4
    SUSPECT = 5
    ALIVE = 6
    DEAD = 7
    PUSH_PULL = 8


# Plain ints for the hot encode path (msgpack packs exact ints fastest).
_PING, _INDIRECT_PING, _ACK, _NACK, _SUSPECT, _ALIVE, _DEAD, _PUSH_PULL = (int(t) for t in MessageType)

# Member states as numbers on the wire (push/pull); `state.MemberState` maps to and from these.
WIRE_ALIVE, WIRE_SUSPECT, WIRE_DEAD, WIRE_LEFT = 0, 1, 2, 3


class MalformedMessage(ValueError):
    """A message whose fields are missing or of the wrong type."""


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise MalformedMessage(f"{what} is not a string")
    return value


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedMessage(f"{what} is not an integer")
    return value


def _port(value: object) -> int:
    """A port a socket can take: one outside 0-65535 would make sendto raise where we send to it."""
    port = _int(value, "port")
    if not 0 <= port <= 65535:
        raise MalformedMessage(f"port {port} is not in 0-65535")
    return port


def _bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise MalformedMessage(f"{what} is not bytes")
    return value


@dataclass(slots=True)
class Ping:
    """Are you there? `target` names who we think answers at this address."""

    seq: int
    target: str
    source: str

    def to_wire(self) -> list:
        return [_PING, self.seq, self.target, self.source]

    @classmethod
    def from_wire(cls, f: list) -> "Ping":
        return cls(_int(f[1], "seq"), _str(f[2], "target"), _str(f[3], "source"))


@dataclass(slots=True)
class IndirectPing:
    """Please ping `target` at host:port for me and relay its ack (and a nack if it stays silent)."""

    seq: int
    target: str
    host: str
    port: int
    nack: bool
    source: str

    def to_wire(self) -> list:
        return [_INDIRECT_PING, self.seq, self.target, self.host, self.port, self.nack, self.source]

    @classmethod
    def from_wire(cls, f: list) -> "IndirectPing":
        return cls(_int(f[1], "seq"), _str(f[2], "target"), _str(f[3], "host"), _port(f[4]),
                   bool(f[5]), _str(f[6], "source"))


@dataclass(slots=True)
class Ack:
    seq: int

    def to_wire(self) -> list:
        return [_ACK, self.seq]

    @classmethod
    def from_wire(cls, f: list) -> "Ack":
        return cls(_int(f[1], "seq"))


@dataclass(slots=True)
class Nack:
    """The relay is alive but the target did not answer it either (Lifeguard: proves our health)."""

    seq: int

    def to_wire(self) -> list:
        return [_NACK, self.seq]

    @classmethod
    def from_wire(cls, f: list) -> "Nack":
        return cls(_int(f[1], "seq"))


@dataclass(slots=True)
class Suspect:
    incarnation: int
    node: str
    accuser: str

    def to_wire(self) -> list:
        return [_SUSPECT, self.incarnation, self.node, self.accuser]

    @classmethod
    def from_wire(cls, f: list) -> "Suspect":
        return cls(_int(f[1], "incarnation"), _str(f[2], "node"), _str(f[3], "accuser"))


@dataclass(slots=True)
class Alive:
    incarnation: int
    node: str
    host: str
    port: int
    meta: bytes
    version: int = PROTOCOL_VERSION

    def to_wire(self) -> list:
        return [_ALIVE, self.incarnation, self.node, self.host, self.port, self.meta, self.version]

    @classmethod
    def from_wire(cls, f: list) -> "Alive":
        return cls(_int(f[1], "incarnation"), _str(f[2], "node"), _str(f[3], "host"), _port(f[4]),
                   _bytes(f[5], "meta"), _int(f[6], "version"))


@dataclass(slots=True)
class Dead:
    """`node` is dead; when `accuser == node` the member announced its own graceful leave."""

    incarnation: int
    node: str
    accuser: str

    def to_wire(self) -> list:
        return [_DEAD, self.incarnation, self.node, self.accuser]

    @classmethod
    def from_wire(cls, f: list) -> "Dead":
        return cls(_int(f[1], "incarnation"), _str(f[2], "node"), _str(f[3], "accuser"))


@dataclass(slots=True)
class PushNodeState:
    """One member as seen by the sender of a push/pull."""

    node: str
    host: str
    port: int
    incarnation: int
    state: int
    meta: bytes

    def to_wire(self) -> list:
        return [self.node, self.host, self.port, self.incarnation, self.state, self.meta]

    @classmethod
    def from_wire(cls, f: list) -> "PushNodeState":
        if len(f) < 6:
            raise MalformedMessage("member state has too few fields")
        state = _int(f[4], "state")
        if state not in (WIRE_ALIVE, WIRE_SUSPECT, WIRE_DEAD, WIRE_LEFT):
            raise MalformedMessage(f"unknown member state {state}")
        return cls(_str(f[0], "node"), _str(f[1], "host"), _port(f[2]), _int(f[3], "incarnation"),
                   state, _bytes(f[5], "meta"))


@dataclass(slots=True)
class PushPull:
    """The sender's whole member table (anti-entropy); `join` marks the first exchange of a joiner.

    `states` stay in wire form (`PushNodeState.to_wire()` lists): a table of thousands mostly agrees
    with ours, and only the entries that differ are worth decoding (`PushNodeState.from_wire`).
    """

    join: bool
    source: str
    states: list[list]

    def to_wire(self) -> list:
        return [_PUSH_PULL, self.join, self.source, self.states]

    @classmethod
    def from_wire(cls, f: list) -> "PushPull":
        states = f[3]
        if not isinstance(states, list) or not all(type(s) is list for s in states):
            raise MalformedMessage("states is not a list of member states")
        return cls(bool(f[1]), _str(f[2], "source"), states)


Message = Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | PushPull

DECODERS = {
    MessageType.PING: Ping.from_wire,
    MessageType.INDIRECT_PING: IndirectPing.from_wire,
    MessageType.ACK: Ack.from_wire,
    MessageType.NACK: Nack.from_wire,
    MessageType.SUSPECT: Suspect.from_wire,
    MessageType.ALIVE: Alive.from_wire,
    MessageType.DEAD: Dead.from_wire,
    MessageType.PUSH_PULL: PushPull.from_wire,
}

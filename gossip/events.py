"""Typed membership events, delivered to subscribers in the order this node saw them happen.

    MemberEvent(member, at)
    ├── MemberJoined      first seen, or back after being dead or left
    ├── MemberUpdated     new metadata, or alive again after a suspicion was refuted
    ├── MemberSuspect     failed a probe; may still refute
    ├── MemberDead        declared dead (suspicion ran out, or a peer declared it)
    ├── MemberLeft        announced a graceful leave
    └── MemberReaped      forgotten: dead or left for longer than the reap timeout
    NameConflict          two addresses claim one member name (the first one seen is kept)

`member` is a snapshot taken when the event happened; `at` is the node's clock reading.
"""

from __future__ import annotations

from dataclasses import dataclass

from .state import Member


@dataclass(frozen=True, slots=True)
class MemberEvent:
    member: Member
    at: float

    kind = "event"


@dataclass(frozen=True, slots=True)
class MemberJoined(MemberEvent):
    kind = "joined"


@dataclass(frozen=True, slots=True)
class MemberUpdated(MemberEvent):
    kind = "updated"


@dataclass(frozen=True, slots=True)
class MemberSuspect(MemberEvent):
    kind = "suspect"


@dataclass(frozen=True, slots=True)
class MemberDead(MemberEvent):
    kind = "dead"


@dataclass(frozen=True, slots=True)
class MemberLeft(MemberEvent):
    kind = "left"


@dataclass(frozen=True, slots=True)
class MemberReaped(MemberEvent):
    kind = "reaped"


@dataclass(frozen=True, slots=True)
class NameConflict:
    """`name` is held by `holder` (kept) and also claimed by `claimant` (ignored)."""

    name: str
    holder: str
    claimant: str
    at: float

    kind = "conflict"


Event = MemberEvent | NameConflict

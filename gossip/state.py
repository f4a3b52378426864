"""Member states, the SWIM override rules between them, and the records that hold them.

A member's view is (state, incarnation). Only the member itself raises its incarnation, to refute
an accusation or to publish new metadata, so a higher incarnation is always newer news about it.
The rules, applied by every node to every message about another member:

    message            overrides what we hold when
    alive(i)           held incarnation j < i, whatever the state            (refutation / update)
    suspect(i)         alive(j) with i >= j;  suspect(j) with i > j          (accusation)
    dead(i), left(i)   alive(j) or suspect(j) with i >= j                    (declaration)

Dead and left are final for an incarnation: only an alive with a higher incarnation (the member
came back, or refuted after a partition) brings the member back. Messages about ourselves are not
applied but refuted (see membership.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from .codec import decode_meta
from .messages import WIRE_ALIVE, WIRE_DEAD, WIRE_LEFT, WIRE_SUSPECT
from .suspicion import Suspicion


class MemberState(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"

    @property
    def live(self) -> bool:
        """Alive or suspect: still a member that is probed and gossiped to."""
        return self is MemberState.ALIVE or self is MemberState.SUSPECT


TO_WIRE = {MemberState.ALIVE: WIRE_ALIVE, MemberState.SUSPECT: WIRE_SUSPECT,
           MemberState.DEAD: WIRE_DEAD, MemberState.LEFT: WIRE_LEFT}
FROM_WIRE = {v: k for k, v in TO_WIRE.items()}


def alive_overrides(state: MemberState, incarnation: int, new_incarnation: int) -> bool:
    return new_incarnation > incarnation


def suspect_overrides(state: MemberState, incarnation: int, new_incarnation: int) -> bool:
    if state is MemberState.ALIVE:
        return new_incarnation >= incarnation
    if state is MemberState.SUSPECT:
        return new_incarnation > incarnation
    return False


def dead_overrides(state: MemberState, incarnation: int, new_incarnation: int) -> bool:
    return state.live and new_incarnation >= incarnation


@dataclass(frozen=True, slots=True)
class Member:
    """One member as this node sees it (a snapshot; it does not change under you)."""

    id: str
    address: str
    """host:port of its gossip endpoint."""
    state: MemberState
    incarnation: int
    meta: Mapping[str, Any]
    """What the member publishes about itself (read-only)."""
    since: float
    """Clock time of its last state change, as read on this node."""

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def to_dict(self) -> dict[str, Any]:
        """The shape of `/v1/cluster/members` entries (without roles, which live in `meta`)."""
        return {"id": self.id, "address": self.address, "state": str(self.state),
                "incarnation": self.incarnation, "meta": dict(self.meta)}


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class NodeRecord:
    """This node's mutable view of one member (internal to the core)."""

    __slots__ = ("name", "host", "port", "incarnation", "state", "state_change", "meta_bytes", "_meta",
                 "suspicion", "suspicion_timer", "version")

    def __init__(self, name: str, host: str, port: int, incarnation: int, state: MemberState,
                 state_change: float, meta_bytes: bytes, version: int = 1) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.incarnation = incarnation
        self.state = state
        self.state_change = state_change
        self.meta_bytes = meta_bytes
        self._meta: Mapping[str, Any] | None = None
        self.suspicion: Suspicion | None = None
        self.suspicion_timer: Any = None
        self.version = version

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def set_meta(self, meta_bytes: bytes) -> None:
        if meta_bytes != self.meta_bytes:
            self.meta_bytes = meta_bytes
            self._meta = None

    @property
    def meta(self) -> Mapping[str, Any]:
        if self._meta is None:
            self._meta = MappingProxyType(decode_meta(self.meta_bytes))
        return self._meta

    def snapshot(self) -> Member:
        return Member(self.name, format_address(self.host, self.port), self.state, self.incarnation,
                      self.meta, self.state_change)

    def __repr__(self) -> str:
        return f"NodeRecord({self.name!r} {self.host}:{self.port} {self.state} inc={self.incarnation})"

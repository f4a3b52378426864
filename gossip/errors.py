"""Errors the gossip library raises on purpose, under cynode's root error.

    CynodeError                 (cynode.errors)
    └── GossipError
        ├── MetadataError       metadata not a msgpack-able str-keyed map, or over the size bound
        ├── JoinError           no seed could be reached and synced with (retryable)
        └── NameConflictError   another live member already uses this node's name
"""

from __future__ import annotations

from cynode.errors import CynodeError


class GossipError(CynodeError):
    """Root of the gossip library's errors."""


class MetadataError(GossipError, ValueError):
    """Node metadata that cannot be published."""


class JoinError(GossipError):
    """Joining failed: `attempts` holds one line per seed address and why it failed."""

    retryable = True

    def __init__(self, message: str, attempts: list[str] | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts or []


class NameConflictError(GossipError):
    """The node's name is held by a live member at another address."""

    def __init__(self, name: str, holder: str, ours: str) -> None:
        super().__init__(
            f"node id {name!r} is already used by a live member at {holder} (this node is {ours}); "
            "give this node another [node] id"
        )
        self.name = name
        self.holder = holder
        self.ours = ours

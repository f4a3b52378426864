"""What the sans-IO core asks its driver to do. The core never touches a socket: every method that
feeds it (a packet, a stream, a tick) returns a list of these, plus events (events.py).

    SendPacket      send these bytes as one UDP datagram; fire and forget
    StreamRequest   open a TCP connection, send `data` as one frame, read one frame back, and hand
                    it (or None on any failure or after `timeout`) to `handle_stream_reply(token, …)`
    JoinResult      the outcome of a join exchange started with `Memberlist.join`
"""

from __future__ import annotations

from dataclasses import dataclass

Address = tuple[str, int]


@dataclass(slots=True)
class SendPacket:
    address: Address
    data: bytes


@dataclass(slots=True)
class StreamRequest:
    token: int
    address: Address
    data: bytes
    timeout: float


@dataclass(slots=True)
class JoinResult:
    token: int
    address: Address
    error: str | None
    """None when the exchange succeeded; otherwise why it did not."""
    conflict_holder: str | None = None
    """Set when a live member at this address already holds our name."""

    @property
    def ok(self) -> bool:
        return self.error is None

"""How gossip reaches the network: the `Transport` interface and address helpers.

Two kinds of traffic, as in memberlist: datagrams (probes and piggybacked gossip; small, lossy,
fire and forget) and streams (push/pull state sync, join, TCP fallback probes: one request frame,
one reply frame, reliable). `udp_transport.UdpTransport` is the real one, `mock_network.MockTransport`
the in-memory double built on the same interface.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable

from .errors import GossipError
from .outputs import Address

DEFAULT_PORT = 7946

PacketHandler = Callable[[Address, bytes], None]
"""Called with each datagram and its source. Must not block: it would block every receive."""

StreamHandler = Callable[[Address, bytes], "bytes | None"]
"""Called with a stream's request frame; returns the reply frame, or None to close unanswered.
Must not block, for the same reason."""


class TransportError(GossipError):
    """A stream exchange failed: refused, reset, timed out, or closed without an answer."""

    retryable = True


class Transport(ABC):
    """A gossip endpoint with a lifecycle. Implementations deliver on the running event loop."""

    @abstractmethod
    async def start(self, on_packet: PacketHandler, on_stream: StreamHandler) -> None:
        """Bind and begin delivering to the handlers."""

    @property
    @abstractmethod
    def address(self) -> Address:
        """The bound (host, port); valid after `start`."""

    @abstractmethod
    def send_packet(self, address: Address, data: bytes) -> None:
        """Send one datagram; never blocks, never raises for an unreachable peer (UDP semantics)."""

    @abstractmethod
    async def request(self, address: Address, data: bytes, timeout: float) -> bytes:
        """Send one frame over a stream and return the peer's reply frame; raises `TransportError`."""

    @abstractmethod
    async def stop(self) -> None:
        """Close everything; idempotent."""

    async def resolve(self, seed: str) -> list[Address]:
        """The addresses a seed ("host" or "host:port") stands for; host names go through DNS."""
        return await resolve(seed, DEFAULT_PORT)


def split_address(text: str, default_port: int = DEFAULT_PORT, *, allow_zero: bool = False) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address to (host, port); raises ValueError.
    Port 0 ("any free port") only with `allow_zero`, for binding."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: missing ']'")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"{text!r} has no host")
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"{text!r}: port {port!r} is not a number") from None
    if not (0 if allow_zero else 1) <= number < 65536:
        raise ValueError(f"{text!r}: port {number} is out of range")
    return host, number


async def resolve(text: str, default_port: int = DEFAULT_PORT) -> list[Address]:
    """Every address a seed name stands for (host names allowed; IPv4 first)."""
    host, port = split_address(text, default_port)
    try:
        ipaddress.ip_address(host)
        return [(host, port)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    found: list[Address] = []
    for family, *_rest, sockaddr in sorted(infos, key=lambda i: i[0] != socket.AF_INET):
        address = (str(sockaddr[0]), int(sockaddr[1]))
        if address not in found:
            found.append(address)
    return found

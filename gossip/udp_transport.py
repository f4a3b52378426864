"""The real transport: UDP datagrams and TCP streams on one port, on the asyncio loop.

TCP carries one exchange per connection: a request frame, a reply frame, close. Frames are
length-prefixed (4 bytes, big-endian) and bounded, so a stranger cannot make us buffer gigabytes;
everything inside a frame is authenticated by the codec before it is believed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct

from cynode.errors import StartupError

from .codec import MAX_STREAM_BYTES
from .outputs import Address
from .transport import PacketHandler, StreamHandler, Transport, TransportError, split_address

log = logging.getLogger("cynode.gossip")

_LENGTH = struct.Struct(">I")
# How long an inbound stream may take to deliver its request frame.
INBOUND_STREAM_TIMEOUT = 10.0
# Inbound streams open at once (each may buffer up to MAX_STREAM_BYTES before it can be authenticated);
# more are closed on arrival, so strangers cannot make a node hold more than this many frames.
MAX_INBOUND_STREAMS = 16


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(_LENGTH.size)
    (length,) = _LENGTH.unpack(header)
    if length > MAX_STREAM_BYTES:
        raise TransportError(f"frame of {length} bytes is over the {MAX_STREAM_BYTES}-byte limit")
    return await reader.readexactly(length)


def frame(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_packet: PacketHandler) -> None:
        self._on_packet = on_packet

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            self._on_packet((addr[0], addr[1]), data)
        except Exception:
            log.exception("gossip: packet handler failed")

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: a peer is gone, which probing will find out.
        log.debug("gossip: UDP error: %s", exc)


class UdpTransport(Transport):
    """Binds UDP and TCP on `bind` ("host:port"; port 0 picks a port free for both)."""

    def __init__(self, bind: str | Address = "0.0.0.0:7946") -> None:
        self._bind = split_address(bind, allow_zero=True) if isinstance(bind, str) else bind
        self._address: Address | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._on_stream: StreamHandler | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._literal: set[str] = set()  # hosts already checked to be IP literals

    @property
    def address(self) -> Address:
        if self._address is None:
            raise RuntimeError("transport is not started")
        return self._address

    async def start(self, on_packet: PacketHandler, on_stream: StreamHandler) -> None:
        loop = asyncio.get_running_loop()
        host, port = self._bind
        self._on_stream = on_stream
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for attempt in range(20 if port == 0 else 1):
            try:
                udp, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(on_packet), local_addr=(host, port),
                                                             family=family)
            except OSError as exc:
                raise StartupError(f"[gossip] bind {host}:{port}: cannot bind UDP ({exc.strerror or exc})") from None
            actual = udp.get_extra_info("sockname")[1]
            try:
                self._server = await asyncio.start_server(self._serve, host, actual, reuse_address=True,
                                                          family=family)
            except OSError as exc:
                udp.close()
                if port == 0 and attempt < 19:
                    continue  # the TCP side of that port is taken: try another
                raise StartupError(f"[gossip] bind {host}:{actual}: cannot bind TCP ({exc.strerror or exc})") from None
            self._udp = udp
            self._address = (host, actual)
            return

    def send_packet(self, address: Address, data: bytes) -> None:
        if self._udp is None or self._udp.is_closing():
            return
        if address[0] not in self._literal:
            # sendto() with a host name would resolve it, blocking the loop: only IP literals.
            try:
                ipaddress.ip_address(address[0])
            except ValueError:
                log.warning("gossip: not sending to %r: not an IP address", address[0])
                return
            if len(self._literal) > 65536:
                self._literal.clear()
            self._literal.add(address[0])
        try:
            self._udp.sendto(data, address)
        except OSError as exc:
            log.debug("gossip: send to %s failed: %s", address, exc)

    async def request(self, address: Address, data: bytes, timeout: float) -> bytes:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(address[0], address[1])
                writer.write(frame(data))
                await writer.drain()
                return await read_frame(reader)
        except TimeoutError:
            raise TransportError(f"{address[0]}:{address[1]}: no answer within {timeout:.1f}s") from None
        except asyncio.IncompleteReadError:
            raise TransportError(f"{address[0]}:{address[1]}: closed without an answer") from None
        except OSError as exc:
            raise TransportError(f"{address[0]}:{address[1]}: {exc.strerror or exc}") from None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        if len(self._connections) >= MAX_INBOUND_STREAMS:
            log.debug("gossip: %d inbound streams open; refusing one from %s", len(self._connections), peer)
            writer.transport.abort()
            return
        self._connections.add(writer)
        try:
            async with asyncio.timeout(INBOUND_STREAM_TIMEOUT):
                request = await read_frame(reader)
            assert self._on_stream is not None
            reply = self._on_stream((peer[0], peer[1]), request)
            if reply is not None:
                writer.write(frame(reply))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, TransportError, OSError) as exc:
            log.debug("gossip: inbound stream from %s failed: %s", peer, exc)
        except Exception:
            log.exception("gossip: stream handler failed")
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

"""An in-memory network for tests and simulation (memberlist's MockNetwork, with faults).

Endpoints are (host, port) addresses attached with a datagram handler and a stream handler.
Datagrams get latency and jitter, may be lost, never cross a partition and vanish at a crashed
(detached) endpoint. Streams model TCP: reliable, refused at once by a crashed endpoint, timing out
across a partition. A paused endpoint models a stalled process: the kernel still queues what
arrives, and it is all handled, in order, when the pause ends.

Time comes from a `Scheduler`: `SimScheduler` for discrete-event simulation (deterministic for a
seed), or `AsyncioScheduler` when real `GossipNode`s run over `MockTransport` on the event loop.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .clock import AsyncioScheduler, Scheduler
from .outputs import Address
from .transport import DEFAULT_PORT, PacketHandler, StreamHandler, Transport, TransportError, split_address


class _Endpoint:
    __slots__ = ("on_packet", "on_stream", "on_resume", "paused_until", "backlog")

    def __init__(self, on_packet: PacketHandler, on_stream: StreamHandler,
                 on_resume: Callable[[], None] | None) -> None:
        self.on_packet = on_packet
        self.on_stream = on_stream
        self.on_resume = on_resume
        self.paused_until = float("-inf")
        self.backlog: list[tuple[Callable[..., Any], tuple]] = []


class _Exchange:
    __slots__ = ("done", "on_reply")

    def __init__(self, on_reply: Callable[[bytes | None], None]) -> None:
        self.done = False
        self.on_reply = on_reply


class MockNetwork:
    def __init__(self, scheduler: Scheduler, *, seed: int = 0, latency: float = 0.0005, jitter: float = 0.001,
                 loss: float = 0.0) -> None:
        self.scheduler = scheduler
        self.rng = random.Random(seed)
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self._endpoints: dict[Address, _Endpoint] = {}
        self._groups: dict[Address, int] = {}
        self.bytes_sent: Counter[Address] = Counter()
        self.packets_sent = 0
        self.packets_lost = 0

    # ---------------------------------------------------------------- topology and faults

    def attach(self, address: Address, on_packet: PacketHandler, on_stream: StreamHandler,
               on_resume: Callable[[], None] | None = None) -> None:
        if address in self._endpoints:
            raise ValueError(f"{address} is already attached")
        self._endpoints[address] = _Endpoint(on_packet, on_stream, on_resume)

    def detach(self, address: Address) -> None:
        """The endpoint is gone (crashed or stopped): its traffic vanishes, its streams are refused."""
        self._endpoints.pop(address, None)

    def partition(self, *groups: Iterable[Address]) -> None:
        """Only members of the same group can talk; addresses in no group form one more group."""
        self._groups = {address: index for index, group in enumerate(groups) for address in group}

    def heal(self) -> None:
        self._groups = {}

    def pause(self, address: Address, seconds: float) -> None:
        """Stall an endpoint for `seconds`: nothing it receives is handled until then."""
        endpoint = self._endpoints[address]
        until = self.scheduler.now() + seconds
        endpoint.paused_until = max(endpoint.paused_until, until)
        self.scheduler.call_at(until, self._resume, address)

    def is_paused(self, address: Address) -> bool:
        endpoint = self._endpoints.get(address)
        return endpoint is not None and endpoint.paused_until > self.scheduler.now()

    def connected(self, a: Address, b: Address) -> bool:
        groups = self._groups
        return not groups or groups.get(a, -1) == groups.get(b, -1)

    def _resume(self, address: Address) -> None:
        endpoint = self._endpoints.get(address)
        if endpoint is None or endpoint.paused_until > self.scheduler.now():
            return
        backlog, endpoint.backlog = endpoint.backlog, []
        for callback, args in backlog:
            callback(*args)
        if endpoint.on_resume is not None:
            endpoint.on_resume()

    def _run_at(self, address: Address, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback` for `address` now, or when its pause ends."""
        endpoint = self._endpoints.get(address)
        if endpoint is None:
            return
        if endpoint.paused_until > self.scheduler.now():
            endpoint.backlog.append((callback, args))
        else:
            callback(*args)

    def _delay(self) -> float:
        return self.latency + self.rng.random() * self.jitter

    # ---------------------------------------------------------------- datagrams

    def send_packet(self, source: Address, destination: Address, data: bytes) -> None:
        self.bytes_sent[source] += len(data)
        self.packets_sent += 1
        if (self.loss and self.rng.random() < self.loss) or not self.connected(source, destination):
            self.packets_lost += 1
            return
        self.scheduler.call_at(self.scheduler.now() + self._delay(), self._arrive, source, destination, data)

    def _arrive(self, source: Address, destination: Address, data: bytes) -> None:
        endpoint = self._endpoints.get(destination)
        if endpoint is None or not self.connected(source, destination):
            return
        if endpoint.paused_until > self.scheduler.now():
            endpoint.backlog.append((endpoint.on_packet, (source, data)))
        else:
            endpoint.on_packet(source, data)

    # ---------------------------------------------------------------- streams

    def stream(self, source: Address, destination: Address, data: bytes, timeout: float,
               on_reply: Callable[[bytes | None], None]) -> None:
        """One request/reply exchange; `on_reply(None)` on refusal or timeout."""
        self.bytes_sent[source] += len(data)
        exchange = _Exchange(on_reply)
        now = self.scheduler.now()
        self.scheduler.call_at(now + timeout, self._finish, source, exchange, None)
        if destination not in self._endpoints and self.connected(source, destination):
            # Connection refused comes back after one round trip.
            self.scheduler.call_at(now + 2 * self._delay(), self._finish, source, exchange, None)
        elif self.connected(source, destination):
            # Handshake plus request: about one and a half round trips.
            self.scheduler.call_at(now + 3 * self._delay(), self._serve, source, destination, data, exchange)

    def _serve(self, source: Address, destination: Address, data: bytes, exchange: _Exchange) -> None:
        if exchange.done:
            return
        if destination not in self._endpoints:
            self._finish(source, exchange, None)
            return
        self._run_at(destination, self._answer, source, destination, data, exchange)

    def _answer(self, source: Address, destination: Address, data: bytes, exchange: _Exchange) -> None:
        endpoint = self._endpoints.get(destination)
        if exchange.done or endpoint is None:
            return
        reply = endpoint.on_stream(source, data)
        if reply is not None:
            self.bytes_sent[destination] += len(reply)
        if not self.connected(source, destination):
            return
        self.scheduler.call_at(self.scheduler.now() + self._delay(), self._finish, source, exchange, reply)

    def _finish(self, source: Address, exchange: _Exchange, reply: bytes | None) -> None:
        if exchange.done:
            return
        exchange.done = True
        if source in self._endpoints:
            self._run_at(source, exchange.on_reply, reply)

    # ---------------------------------------------------------------- asyncio endpoints

    def transport(self, address: Address) -> "MockTransport":
        """A `Transport` on this network (for `GossipNode`s under an `AsyncioScheduler`)."""
        return MockTransport(self, address)


class MockTransport(Transport):
    """`Transport` over a `MockNetwork` whose scheduler is the running asyncio loop."""

    def __init__(self, network: MockNetwork, address: Address) -> None:
        if not isinstance(network.scheduler, AsyncioScheduler):
            raise TypeError("MockTransport needs a MockNetwork built on an AsyncioScheduler")
        self._network = network
        self._address = address
        self._started = False

    @property
    def address(self) -> Address:
        return self._address

    async def start(self, on_packet: PacketHandler, on_stream: StreamHandler) -> None:
        self._network.attach(self._address, on_packet, on_stream)
        self._started = True

    def send_packet(self, address: Address, data: bytes) -> None:
        if self._started:
            self._network.send_packet(self._address, address, data)

    async def request(self, address: Address, data: bytes, timeout: float) -> bytes:
        if not self._started:
            raise TransportError("transport is not started")
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def on_reply(reply: bytes | None) -> None:
            if not future.done():
                future.set_result(reply)

        self._network.stream(self._address, address, data, timeout, on_reply)
        reply = await future
        if reply is None:
            raise TransportError(f"no answer from {address[0]}:{address[1]}")
        return reply

    async def resolve(self, seed: str) -> list[Address]:
        """Names on the in-memory network are addresses already: no DNS."""
        return [split_address(seed, DEFAULT_PORT)]

    async def stop(self) -> None:
        if self._started:
            self._started = False
            self._network.detach(self._address)

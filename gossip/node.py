"""`GossipNode`: the sans-IO core run on a `Transport` with a real clock, on the asyncio loop.

One owned background task holds a TaskGroup: the timer loop that ticks the core when its next
deadline comes, and one task per TCP exchange the core asks for. Packets and inbound streams are
handled synchronously in the transport's callbacks (the core never blocks). Subscribers get events
through bounded queues: a consumer that falls behind loses its oldest events (counted and logged),
never stalls the protocol.

    node = GossipNode("edge-01", UdpTransport("10.0.0.11:7946"), config=lan(), meta={"roles": [...]},
                      cluster="default", keyring=Keyring(load_keys(path)))
    await node.start()
    await node.join(["10.0.0.12:7946", "gpu-box:7946"])
    async for event in node.subscribe(): ...
    await node.leave(); await node.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_random_exponential

from .clock import Clock, MonotonicClock
from .codec import encode_meta
from .config import GossipConfig, lan
from .errors import GossipError, JoinError, NameConflictError
from .events import Event
from .keyring import Keyring
from .memberlist import Memberlist, Output
from .outputs import Address, JoinResult, SendPacket, StreamRequest
from .state import Member, format_address
from .transport import Transport, TransportError, split_address

log = logging.getLogger("cynode.gossip")

Listener = Callable[[Event], None]


class Subscription:
    """An async iterator of events with a bounded buffer; `close()` (or `async with`) ends it."""

    def __init__(self, owner: "GossipNode", maxsize: int) -> None:
        self._owner = owner
        self._events: deque[Event] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def _put(self, event: Event) -> None:
        if len(self._events) >= self._maxsize:
            self._events.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("gossip: a subscriber is behind; %d event(s) dropped", self.dropped)
        self._events.append(event)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()
        self._owner._subscriptions.discard(self)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        while not self._events:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._events.popleft()

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class GossipNode:
    """A cluster member. Not thread-safe: use it from the event loop it was started on."""

    def __init__(self, name: str, transport: Transport, *, config: GossipConfig | None = None,
                 meta: Mapping[str, Any] | None = None, cluster: str = "default", keyring: Keyring | None = None,
                 advertise: str | Address | None = None, clock: Clock | None = None,
                 rng: random.Random | None = None, meta_interval: float = 1.0) -> None:
        self.name = name
        self.transport = transport
        self.config = config or lan()
        self._meta = dict(meta or {})
        self._cluster = cluster
        self._keyring = keyring
        self._advertise = advertise
        self._clock = clock or MonotonicClock()
        self._rng = rng
        self._core: Memberlist | None = None
        self._runner: asyncio.Task | None = None
        self._group: asyncio.TaskGroup | None = None
        self._wakeup = asyncio.Event()
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[Listener] = []
        self._joins: dict[int, asyncio.Future[JoinResult]] = {}
        self._left = asyncio.Event()
        # Metadata changes are published at most once per `meta_interval`: every publication is
        # a cluster-wide broadcast, and load figures can change many times a second.
        self._meta_interval = meta_interval
        self._meta_published = float("-inf")
        self._meta_timer: asyncio.TimerHandle | None = None
        encode_meta(self._meta)  # a bad value fails here, at construction, with a clear error

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the transport and begin probing and gossiping (alone, until `join`)."""
        if self._core is not None:
            return
        await self.transport.start(self._on_packet, self._on_stream)
        try:
            address = await self._advertised_address()
            self._core = Memberlist(self.name, address, config=self.config, meta=self._meta, cluster=self._cluster,
                                    keyring=self._keyring, clock=self._clock, rng=self._rng)
        except BaseException:
            await self.transport.stop()
            raise
        ready = asyncio.Event()
        self._runner = asyncio.create_task(self._run(ready), name=f"gossip {self.name}")
        await ready.wait()
        self._dispatch(self._core.start())
        log.info("gossip: %s listening on %s (cluster %r, %s)", self.name, format_address(*address),
                 self._cluster, "encrypted" if self._keyring else "unencrypted")

    async def _advertised_address(self) -> Address:
        """Where peers reach us, resolved once: peers must never need DNS to answer a probe."""
        bound = self.transport.address
        if self._advertise is None:
            host, port = bound
        elif isinstance(self._advertise, str):
            host, port = split_address(self._advertise, bound[1])
        else:
            host, port = self._advertise
        if host in ("0.0.0.0", "::", ""):
            raise GossipError(f"gossip is bound to {format_address(*bound)}, which peers cannot reach; "
                              "set [node] advertise to this host's address")
        try:
            resolved = await self.transport.resolve(format_address(host, port))
        except (OSError, ValueError) as exc:
            raise GossipError(f"advertise address {host!r} does not resolve: {exc}") from None
        if not resolved:
            raise GossipError(f"advertise address {host!r} does not resolve")
        return resolved[0]

    async def stop(self) -> None:
        """Stop at once (no leave message: peers will find this node dead). Idempotent."""
        if self._meta_timer is not None:
            self._meta_timer.cancel()
            self._meta_timer = None
        if self._core is not None:
            self._core.stop()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # failures were logged in _run
                await self._runner
            self._runner = None
        await self.transport.stop()
        for future in self._joins.values():
            if not future.done():
                future.cancel()
        for subscription in list(self._subscriptions):
            subscription.close()

    async def leave(self, timeout: float = 5.0) -> None:
        """Tell the cluster this node is leaving, and wait (up to `timeout`) until that has been
        gossiped; then `stop()`. Peers mark it `left`, not `dead`."""
        core = self._require_core()
        self._dispatch(core.leave())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not core.leave_done:
                    self._left.clear()
                    await self._left.wait()
        await self.stop()

    async def __aenter__(self) -> "GossipNode":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self, ready: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                ready.set()
                await self._timer_loop()
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("gossip: %s stopped on an error", self.name)
            raise
        finally:
            self._group = None

    async def _timer_loop(self) -> None:
        core = self._require_core()
        while True:
            delay = core.next_deadline() - self._clock.now()
            if delay > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(delay, 3600.0)):
                        await self._wakeup.wait()
                continue
            try:
                self._dispatch(core.tick(), wake=False)
            except Exception:
                # The timer that failed has already been taken off the queue: log, keep going.
                log.exception("gossip: %s: a protocol timer failed", self.name)

    # ---------------------------------------------------------------- membership

    async def join(self, seeds: Sequence[str], *, timeout: float = 30.0, attempts: int = 10) -> int:
        """Sync with every reachable seed ("host" or "host:port"; names are resolved) and return how
        many answered. While none answers, retry with full-jitter exponential backoff until
        `timeout` or `attempts` run out, then raise `JoinError`. Raises `NameConflictError` at once
        when a live member already holds this node's name. Seeds that are this node are skipped."""
        core = self._require_core()
        if not seeds:
            return 0
        retrying = AsyncRetrying(
            stop=stop_after_delay(timeout) | stop_after_attempt(attempts),
            wait=wait_random_exponential(multiplier=0.5, max=10.0),
            retry=retry_if_exception_type(JoinError),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._join_once(core, seeds)
        return 0  # unreachable: the retry loop either returns or raises

    async def _join_once(self, core: Memberlist, seeds: Sequence[str]) -> int:
        problems: list[str] = []
        addresses: list[Address] = []
        own = (core.local.host, core.local.port)
        for seed in seeds:
            try:
                for address in await self.transport.resolve(seed):
                    if address != own and address != self.transport.address and address not in addresses:
                        addresses.append(address)
            except (OSError, ValueError) as exc:
                problems.append(f"{seed}: cannot resolve ({exc})")
        if not addresses and not problems:
            return 0  # every seed is this node: a cluster of one, for now
        waits: list[asyncio.Future[JoinResult]] = []
        for address in addresses:
            outputs = core.join(address)
            for out in outputs:
                if isinstance(out, StreamRequest):
                    future: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
                    self._joins[out.token] = future
                    waits.append(future)
            self._dispatch(outputs)
        results = await asyncio.gather(*waits)
        joined = 0
        for result in results:
            if result.conflict_holder is not None:
                raise NameConflictError(self.name, result.conflict_holder, format_address(*own))
            if result.ok:
                joined += 1
            else:
                problems.append(f"{format_address(*result.address)}: {result.error}")
        if joined == 0:
            raise JoinError("could not join the cluster through any seed:\n  " + "\n  ".join(problems), problems)
        log.info("gossip: %s joined through %d of %d seed address(es)", self.name, joined, len(addresses))
        return joined

    def members(self) -> list[Member]:
        """Every known member, this node included, sorted by id; dead and left ones until reaped."""
        return self._require_core().members()

    def member(self, name: str) -> Member | None:
        return self._require_core().member(name)

    @property
    def local(self) -> Member:
        return self._require_core().local.snapshot()

    def update_meta(self, meta: Mapping[str, Any]) -> None:
        """Publish new metadata; raises `MetadataError` at once if it is too large or not
        msgpack-able. Calls closer together than `meta_interval` are coalesced: the latest value
        goes out when the interval has passed."""
        self._require_core()
        encode_meta(meta)
        self._meta = dict(meta)
        wait = self._meta_published + self._meta_interval - self._clock.now()
        if wait <= 0:
            self._publish_meta()
        elif self._meta_timer is None:
            self._meta_timer = asyncio.get_running_loop().call_later(wait, self._publish_meta)

    def _publish_meta(self) -> None:
        self._meta_timer = None
        if self._core is None or self._runner is None:
            return
        self._meta_published = self._clock.now()
        self._dispatch(self._core.update_meta(self._meta))

    @property
    def keyring(self) -> Keyring | None:
        """The keyring packets are sealed with; `Keyring.replace` rotates keys without a restart."""
        return self._keyring

    @property
    def health_score(self) -> int:
        """Lifeguard local health: 0 is healthy; higher means this node is probing more slowly."""
        return self._require_core().health_score

    def stats(self) -> dict[str, int]:
        """Counters: packets and bytes in and out, probes, suspicions, refutes, drops by reason."""
        return dict(self._require_core().stats)

    def subscribe(self, maxsize: int = 4096) -> Subscription:
        """Events from now on, as an async iterator (see events.py)."""
        subscription = Subscription(self, maxsize)
        self._subscriptions.add(subscription)
        return subscription

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` for every event; it runs inside the protocol loop, so it must not
        block. Returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # ---------------------------------------------------------------- plumbing

    def _require_core(self) -> Memberlist:
        if self._core is None:
            raise GossipError("the gossip node is not started")
        return self._core

    def _on_packet(self, source: Address, data: bytes) -> None:
        if self._core is not None:
            self._dispatch(self._core.handle_packet(source, data))

    def _on_stream(self, source: Address, data: bytes) -> bytes | None:
        if self._core is None:
            return None
        reply, outputs = self._core.handle_stream(source, data)
        self._dispatch(outputs)
        return reply

    def _dispatch(self, outputs: list[Output], wake: bool = True) -> None:
        for out in outputs:
            if isinstance(out, SendPacket):
                self.transport.send_packet(out.address, out.data)
            elif isinstance(out, StreamRequest):
                if self._group is not None:
                    self._group.create_task(self._exchange(out))
            elif isinstance(out, JoinResult):
                future = self._joins.pop(out.token, None)
                if future is not None and not future.done():
                    future.set_result(out)
            else:
                self._deliver(out)
        if self._core is not None and self._core.leave_done:
            self._left.set()
        if wake:
            self._wakeup.set()

    def _deliver(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("gossip: event listener failed")
        for subscription in self._subscriptions:
            subscription._put(event)

    async def _exchange(self, request: StreamRequest) -> None:
        try:
            reply: bytes | None = await self.transport.request(request.address, request.data, request.timeout)
        except TransportError as exc:
            log.debug("gossip: stream to %s failed: %s", request.address, exc)
            reply = None
        except Exception:
            log.exception("gossip: stream to %s failed", request.address)
            reply = None
        if self._core is not None:
            self._dispatch(self._core.handle_stream_reply(request.token, reply))

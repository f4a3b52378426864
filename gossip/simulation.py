"""Whole clusters of sans-IO cores on a `MockNetwork`, in simulated time.

Event-driven: one heap holds every packet in flight and every node's next wake-up, so simulated
time jumps from event to event. Each node's core is woken exactly when its own `next_deadline()`
says, which keeps a 1000-node cluster-hour affordable in pure Python. Same seed, same run.

    cluster = SimCluster(10, lan(), seed=1)
    cluster.run_for(5)
    cluster.crash(3)
    cluster.run_for(30)
    assert all(view["node-3"] == "dead" for view in cluster.views(live_only=True))
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from .clock import SimScheduler
from .config import GossipConfig, lan
from .events import Event
from .keyring import Keyring
from .memberlist import Memberlist, Output
from .mock_network import MockNetwork
from .outputs import Address, JoinResult, SendPacket, StreamRequest
from .state import MemberState

EventHook = Callable[[float, "SimNode", Event], None]


class SimNode:
    __slots__ = ("index", "name", "address", "core", "crashed", "wake_at", "wake_token", "join_results")

    def __init__(self, index: int, name: str, address: Address, core: Memberlist) -> None:
        self.index = index
        self.name = name
        self.address = address
        self.core = core
        self.crashed = False
        self.wake_at = float("inf")
        self.wake_token = 0
        self.join_results: list[JoinResult] = []


class SimCluster:
    def __init__(self, size: int, config: GossipConfig | None = None, *, seed: int = 0, latency: float = 0.0005,
                 jitter: float = 0.001, loss: float = 0.0, cluster: str = "sim", keys: tuple[bytes, ...] | None = None,
                 meta: Callable[[int], Mapping[str, Any]] | None = None, on_event: EventHook | None = None,
                 primed: bool = True) -> None:
        self.config = config or lan()
        self.scheduler = SimScheduler()
        self.network = MockNetwork(self.scheduler, seed=seed, latency=latency, jitter=jitter, loss=loss)
        self._rng = random.Random(seed ^ 0x5EED)
        self._keyring = Keyring(keys) if keys else None
        self._cluster = cluster
        self._meta = meta or (lambda i: {})
        self.on_event = on_event
        self.nodes: list[SimNode] = []
        for _ in range(size):
            self.add_node(start=False)
        if primed:
            everyone = [(n.name, n.address, n.core.local.meta_bytes) for n in self.nodes]
            for node in self.nodes:
                self._process(node, node.core.prime(everyone))
        for node in self.nodes:
            self._process(node, node.core.start())
        if not primed:
            for node in self.nodes[1:]:
                self._process(node, node.core.join(self.nodes[0].address))

    # ---------------------------------------------------------------- building

    def add_node(self, *, start: bool = True, name: str | None = None, config: GossipConfig | None = None,
                 cluster: str | None = None, keys: tuple[bytes, ...] | None = None,
                 meta: Mapping[str, Any] | None = None, address: Address | None = None) -> SimNode:
        index = len(self.nodes)
        name = name or f"node-{index}"
        address = address or (f"10.{index // 65536}.{(index // 256) % 256}.{index % 256}", 7946)
        keyring = Keyring(keys) if keys else self._keyring
        core = Memberlist(name, address, config=config or self.config,
                          meta=meta if meta is not None else self._meta(index), cluster=cluster or self._cluster,
                          keyring=keyring, clock=self.scheduler, rng=random.Random(self._rng.getrandbits(64)))
        node = SimNode(index, name, address, core)
        self.nodes.append(node)
        self.network.attach(address, lambda src, data, n=node: self._on_packet(n, src, data),
                            lambda src, data, n=node: self._on_stream(n, src, data),
                            lambda n=node: self._on_resume(n))
        if start:
            self._process(node, core.start())
        return node

    # ---------------------------------------------------------------- driving

    def _process(self, node: SimNode, outputs: list[Output]) -> None:
        network = self.network
        for out in outputs:
            kind = type(out)
            if kind is SendPacket:
                network.send_packet(node.address, out.address, out.data)
            elif kind is StreamRequest:
                network.stream(node.address, out.address, out.data, out.timeout,
                               lambda reply, n=node, t=out.token: self._on_stream_reply(n, t, reply))
            elif kind is JoinResult:
                node.join_results.append(out)
            elif self.on_event is not None:
                self.on_event(self.scheduler.now(), node, out)
        deadline = node.core.next_deadline()
        if deadline < node.wake_at:
            node.wake_at = deadline
            node.wake_token += 1
            self.scheduler.call_at(deadline, self._wake, node, node.wake_token)

    def _wake(self, node: SimNode, token: int) -> None:
        if token != node.wake_token or node.crashed:
            return
        node.wake_at = float("inf")
        if self.network.is_paused(node.address):
            return  # _on_resume ticks it
        self._process(node, node.core.tick())

    def _on_packet(self, node: SimNode, source: Address, data: bytes) -> None:
        if not node.crashed:
            self._process(node, node.core.handle_packet(source, data))

    def _on_stream(self, node: SimNode, source: Address, data: bytes) -> bytes | None:
        if node.crashed:
            return None
        reply, outputs = node.core.handle_stream(source, data)
        self._process(node, outputs)
        return reply

    def _on_stream_reply(self, node: SimNode, token: int, reply: bytes | None) -> None:
        if not node.crashed:
            self._process(node, node.core.handle_stream_reply(token, reply))

    def _on_resume(self, node: SimNode) -> None:
        if not node.crashed:
            node.wake_at = float("inf")
            self._process(node, node.core.tick())

    def run_for(self, seconds: float) -> None:
        self.scheduler.run_until(self.scheduler.now() + seconds)

    def run_until(self, when: float) -> None:
        self.scheduler.run_until(when)

    @property
    def now(self) -> float:
        return self.scheduler.now()

    # ---------------------------------------------------------------- faults and changes

    def crash(self, index: int) -> None:
        """Stop a node abruptly: no leave message, its address goes silent."""
        node = self.nodes[index]
        node.crashed = True
        node.core.stop()
        self.network.detach(node.address)

    def pause(self, index: int, seconds: float) -> None:
        """Stall a node's loop: it handles nothing, runs no timer, for `seconds`."""
        self.network.pause(self.nodes[index].address, seconds)

    def stall_randomly(self, indices: list[int], *, every: float, duration: tuple[float, float],
                       until: float) -> None:
        """Make each node in `indices` stall again and again until `until`: gaps are exponential
        with mean `every` seconds, each stall lasts uniform(*duration) seconds (GC pauses, a
        blocked event loop, a CPU-starved VM)."""
        rng = random.Random(self._rng.getrandbits(64))

        def next_stall(index: int) -> None:
            node = self.nodes[index]
            if node.crashed or self.now >= until:
                return
            seconds = rng.uniform(*duration)
            self.pause(index, seconds)
            self.scheduler.call_at(self.now + seconds + rng.expovariate(1.0 / every), next_stall, index)

        for index in indices:
            self.scheduler.call_at(self.now + rng.expovariate(1.0 / every), next_stall, index)

    def partition(self, *groups: list[int]) -> None:
        self.network.partition(*([self.nodes[i].address for i in group] for group in groups))

    def heal(self) -> None:
        self.network.heal()

    def update_meta(self, index: int, meta: Mapping[str, Any]) -> None:
        node = self.nodes[index]
        self._process(node, node.core.update_meta(meta))

    def leave(self, index: int) -> None:
        node = self.nodes[index]
        self._process(node, node.core.leave())

    def join(self, index: int, seed: int) -> None:
        node = self.nodes[index]
        self._process(node, node.core.join(self.nodes[seed].address))

    # ---------------------------------------------------------------- observing

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if not n.crashed]

    def view(self, index: int) -> dict[str, MemberState]:
        """Node `index`'s opinion of every member it knows."""
        return {rec.name: rec.state for rec in self.nodes[index].core.membership}

    def views(self, live_only: bool = True) -> list[dict[str, MemberState]]:
        return [self.view(n.index) for n in self.nodes if not (live_only and n.crashed)]

    def converged(self, expected: Mapping[str, MemberState]) -> bool:
        """Every running node holds exactly `expected` for the names it lists."""
        for node in self.live_nodes():
            view = self.view(node.index)
            if any(view.get(name) is not state for name, state in expected.items()):
                return False
        return True

"""Gossip timing and sizing, with the `lan`, `wan` and `local` presets.

The presets are HashiCorp memberlist's DefaultLANConfig / DefaultWANConfig / DefaultLocalConfig,
plus Serf's reconnect and reap settings (memberlist alone forgets dead nodes, so two halves of a
healed partition would never find each other again). Every value says why it is what it is.
Durations are seconds (floats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

PROFILES = ("lan", "wan", "local")

# Push/pull stays at its base interval up to this many members, then backs off with log2(n),
# so the full-state exchange (O(n) bytes each) does not grow into O(n^2) cluster traffic.
PUSH_PULL_SCALE_THRESHOLD = 32


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """How often a node probes, gossips and syncs, and how patient it is before declaring death."""

    probe_interval: float = 1.0
    """Time between failure probes of one random member (scaled up by the local health score)."""
    probe_timeout: float = 0.5
    """How long to wait for a direct ack before asking `indirect_checks` peers to probe too."""
    indirect_checks: int = 3
    """Peers asked to probe a member that did not answer us directly."""
    retransmit_mult: int = 4
    """Each state change is piggybacked retransmit_mult * ceil(log10(n + 1)) times."""
    suspicion_mult: int = 4
    """Minimum suspicion timeout is suspicion_mult * max(1, log10(n)) * probe_interval."""
    suspicion_max_timeout_mult: int = 6
    """Suspicion starts at this multiple of the minimum and shrinks with independent confirmations."""
    awareness_max_multiplier: int = 8
    """Upper bound of the local health multiplier applied to our own probe interval."""
    gossip_interval: float = 0.2
    """Time between gossip rounds that send queued state changes to `gossip_nodes` peers."""
    gossip_nodes: int = 3
    """Peers each gossip round sends to."""
    gossip_to_the_dead_time: float = 30.0
    """Keep gossiping to a dead member this long, so it can learn it was declared dead and refute."""
    push_pull_interval: float = 30.0
    """Time between full-state TCP syncs with one random member (anti-entropy); 0 disables."""
    tcp_timeout: float = 10.0
    """Deadline of one TCP exchange (push/pull, join)."""
    tcp_ping_fallback: bool = True
    """Also probe over TCP when UDP probes fail, so a lossy UDP path alone does not kill a member."""
    udp_buffer_size: int = 1400
    """Largest UDP packet sent: below the common 1500-byte MTU minus IP/UDP headers."""
    reconnect_interval: float = 30.0
    """How often to try a full sync with a random dead member, so healed partitions merge again."""
    reconnect_timeout: float = 24 * 3600.0
    """A dead member is forgotten (reaped) after this long; until then reconnects are attempted."""
    tombstone_timeout: float = 24 * 3600.0
    """A member that left gracefully is forgotten after this long."""
    reap_interval: float = 15.0
    """How often dead and left members past their timeout are forgotten."""
    dead_node_reclaim_time: float = 0.0
    """A dead member's name may be taken by a new address after this long (0: at once)."""
    max_queued_broadcasts: int = 4096
    """Oldest, most-sent broadcasts beyond this many are dropped (push/pull repairs what is lost)."""

    def __post_init__(self) -> None:
        problems = []
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and value < 0:
                problems.append(f"{item.name} must not be negative (got {value})")
        for name in ("probe_interval", "probe_timeout", "gossip_interval", "tcp_timeout", "reap_interval"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive (got {getattr(self, name)})")
        if self.probe_timeout > self.probe_interval:
            problems.append("probe_timeout must not exceed probe_interval")
        if self.awareness_max_multiplier < 1 or self.suspicion_mult < 1 or self.retransmit_mult < 1:
            problems.append("awareness_max_multiplier, suspicion_mult and retransmit_mult must be at least 1")
        if self.suspicion_max_timeout_mult < 1:
            problems.append("suspicion_max_timeout_mult must be at least 1")
        if self.udp_buffer_size < 576:
            problems.append(f"udp_buffer_size must be at least 576 (got {self.udp_buffer_size})")
        if problems:
            raise ValueError("; ".join(problems))

    def with_(self, **changes: object) -> "GossipConfig":
        """A copy with some values changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    # Derived values, memberlist's formulas.

    def retransmit_limit(self, n: int) -> int:
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def suspicion_min(self, n: int) -> float:
        scale = max(1.0, math.log10(max(1.0, float(n))))
        return self.suspicion_mult * scale * self.probe_interval

    def push_pull_period(self, n: int) -> float:
        if n <= PUSH_PULL_SCALE_THRESHOLD:
            return self.push_pull_interval
        multiplier = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1
        return multiplier * self.push_pull_interval


def lan() -> GossipConfig:
    """memberlist's DefaultLANConfig: one data centre, sub-millisecond round trips."""
    return GossipConfig(
        probe_interval=1.0,  # failure check every second
        probe_timeout=0.5,  # a generous LAN round trip; after it, indirect probes start
        indirect_checks=3,  # three independent paths before suspecting anyone
        retransmit_mult=4,  # 4 * log(n+1) retransmits reach every node with high probability
        suspicion_mult=4,  # suspect for 4 * log10(n) probe intervals at least
        suspicion_max_timeout_mult=6,  # for 10k nodes: a 120 s maximum suspicion
        awareness_max_multiplier=8,  # a struggling node backs its probing off to 8 s at most
        gossip_interval=0.2,  # gossip much faster than probing: state changes spread in ~1 s
        gossip_nodes=3,  # fan-out of 3 per round
        gossip_to_the_dead_time=30.0,  # same as push/pull: a dead node gets a chance to refute
        push_pull_interval=30.0,  # full sync is expensive: low frequency
        tcp_timeout=10.0,  # a LAN TCP exchange that takes 10 s has failed
    )


def wan() -> GossipConfig:
    """memberlist's DefaultWANConfig: members across data centres, 10-100 ms and lossier links."""
    return lan().with_(
        tcp_timeout=30.0,  # large states over slow links
        suspicion_mult=6,  # more patience before dead: WAN loss is bursty
        push_pull_interval=60.0,  # full syncs cost more over the WAN
        probe_timeout=3.0,  # WAN round trips plus queueing
        probe_interval=5.0,  # probe less often, the network is the bottleneck
        gossip_nodes=4,  # gossip less often, but to one more node
        gossip_interval=0.5,
        gossip_to_the_dead_time=60.0,  # matches push/pull
    )


def local() -> GossipConfig:
    """memberlist's DefaultLocalConfig: loopback or one host; fast detection, little redundancy."""
    return lan().with_(
        tcp_timeout=1.0,  # loopback TCP is instant; 1 s means the peer is gone
        indirect_checks=1,  # loopback does not lose packets: one indirect path is enough
        retransmit_mult=2,  # fewer retransmits for a tiny, lossless network
        suspicion_mult=3,  # shorter suspicion
        push_pull_interval=15.0,  # cheap syncs, do them more often
        probe_timeout=0.2,  # loopback round trips are microseconds
        probe_interval=1.0,
        gossip_interval=0.1,  # spread changes faster
        gossip_to_the_dead_time=15.0,  # matches push/pull
    )


def preset(name: str) -> GossipConfig:
    """The timing profile named in node.toml `[gossip] profile`."""
    if name == "lan":
        return lan()
    if name == "wan":
        return wan()
    if name == "local":
        return local()
    raise ValueError(f"unknown gossip profile {name!r} (expected one of {', '.join(PROFILES)})")

"""The SWIM failure detector with Lifeguard's refinements (memberlist's probe / probeNode and the
indirect-ping handler).

Each probe period this node pings the next member of a shuffled round-robin list (so every member
is probed within one pass, and a new member is inserted at a random place so that detection time
stays low on average). No ack within `probe_timeout`: `indirect_checks` other members are asked to
ping it for us, and (if enabled) a TCP ping is tried too, so one lossy UDP path is not enough to
accuse anyone. No ack by the end of the period: the member becomes suspect.

Lifeguard:
- the period is stretched by the local health multiplier (awareness.py), so a struggling node
  probes, and accuses, less often;
- relays answer with a nack when the target stays silent: missing nacks mean *we* are the problem,
  and raise our health score instead of only the target's suspicion;
- a probe of a suspect member carries the suspicion with it ("buddy system"), so a member that is
  only slow learns it is suspected at once and can refute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .codec import encode
from .messages import Ack, IndirectPing, Nack, Ping, Suspect
from .outputs import Address
from .state import MemberState, NodeRecord

if TYPE_CHECKING:
    from .clock import Timer
    from .memberlist import Memberlist

ALIVE, SUSPECT = MemberState.ALIVE, MemberState.SUSPECT


class _Probe:
    __slots__ = ("seq", "target", "expected_nacks", "nacks", "timeout_timer", "deadline_timer", "deadline")

    def __init__(self, seq: int, target: NodeRecord, deadline: float) -> None:
        self.seq = seq
        self.target = target
        self.deadline = deadline
        self.expected_nacks = 0
        self.nacks = 0
        self.timeout_timer: Timer | None = None
        self.deadline_timer: Timer | None = None


class _Relay:
    __slots__ = ("requester", "seq", "nack", "timer")

    def __init__(self, requester: Address, seq: int, nack: bool) -> None:
        self.requester = requester
        self.seq = seq
        self.nack = nack
        self.timer: Timer | None = None


class Prober:
    """Not thread-safe; owned by one `Memberlist`."""

    def __init__(self, core: "Memberlist") -> None:
        self._core = core
        self._order: list[NodeRecord] = []
        self._index = 0
        self._pending: dict[int, _Probe] = {}
        self._relays: dict[int, _Relay] = {}
        self._timer: Timer | None = None

    def start(self) -> None:
        core = self._core
        # A random phase, so that nodes started together do not probe in lock-step.
        first = core.clock.now() + core.rng.uniform(0, core.config.probe_interval)
        self._timer = core.timers.call_at(first, self._round)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def insert(self, rec: NodeRecord) -> None:
        """A new member joins the probe list at a random position."""
        self._order.insert(self._core.rng.randint(0, len(self._order)), rec)

    # ---------------------------------------------------------------- probing

    def _round(self) -> None:
        core = self._core
        interval = core.awareness.scale(core.config.probe_interval)
        target = self._next_target()
        if target is not None:
            self._probe(target, interval)
        self._timer = core.timers.call_at(core.clock.now() + interval, self._round)

    def _next_target(self) -> NodeRecord | None:
        checked = 0
        order = self._order
        while True:
            if self._index >= len(order):
                # Wrap around: start a new pass over the current live members, freshly shuffled.
                order = self._order = [r for r in self._core.membership.live]
                self._core.rng.shuffle(order)
                self._index = 0
                if not order:
                    return None
            rec = order[self._index]
            self._index += 1
            if rec.state.live and self._core.membership.nodes.get(rec.name) is rec:
                return rec
            checked += 1
            if checked > len(order):
                return None

    def _probe(self, rec: NodeRecord, interval: float) -> None:
        core = self._core
        now = core.clock.now()
        seq = core.next_seq()
        ping = encode(Ping(seq, rec.name, core.name))
        if rec.state is SUSPECT:
            core.send(rec.address, ping, encode(Suspect(rec.incarnation, rec.name, core.name)))
        else:
            core.send(rec.address, ping)
        probe = _Probe(seq, rec, now + interval)
        self._pending[seq] = probe
        probe.timeout_timer = core.timers.call_at(now + core.config.probe_timeout, self._timed_out, probe)
        probe.deadline_timer = core.timers.call_at(now + interval, self._failed, probe)
        core.stats["probes"] += 1

    def _timed_out(self, probe: _Probe) -> None:
        """No direct ack in time: ask others to try, and try TCP ourselves."""
        core = self._core
        if self._pending.get(probe.seq) is not probe:
            return
        target = probe.target
        relays = core.membership.random_live(core.config.indirect_checks, exclude=target.name, alive_only=True)
        request = encode(IndirectPing(probe.seq, target.name, target.host, target.port, True, core.name))
        for relay in relays:
            core.send(relay.address, request)
            probe.expected_nacks += 1
        core.stats["indirect_probes"] += len(relays)
        remaining = probe.deadline - core.clock.now()
        if core.config.tcp_ping_fallback and remaining > 0:
            core.stream_ping(target.address, Ping(probe.seq, target.name, core.name), remaining)

    def _failed(self, probe: _Probe) -> None:
        """End of the period without any ack: our health and the target's suspicion both move."""
        core = self._core
        if self._pending.pop(probe.seq, None) is None:
            return
        if probe.timeout_timer is not None:
            probe.timeout_timer.cancel()
        # With relays that nack, missing nacks point at us; without them, any failure might be ours.
        if probe.expected_nacks > 0:
            core.awareness.apply_delta(max(0, probe.expected_nacks - probe.nacks))
        else:
            core.awareness.apply_delta(1)
        core.stats["probe_failures"] += 1
        target = probe.target
        if core.membership.nodes.get(target.name) is target and target.state.live:
            core.membership.on_suspect(Suspect(target.incarnation, target.name, core.name))

    def on_ack(self, seq: int) -> None:
        probe = self._pending.pop(seq, None)
        if probe is not None:
            for timer in (probe.timeout_timer, probe.deadline_timer):
                if timer is not None:
                    timer.cancel()
            self._core.awareness.apply_delta(-1)
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            if relay.timer is not None:
                relay.timer.cancel()
            self._core.send(relay.requester, encode(Ack(relay.seq)))

    def on_nack(self, seq: int) -> None:
        probe = self._pending.get(seq)
        if probe is not None:
            probe.nacks += 1

    # ---------------------------------------------------------------- relaying for others

    def on_indirect_ping(self, source: Address, msg: IndirectPing) -> None:
        core = self._core
        seq = core.next_seq()
        relay = _Relay(source, msg.seq, msg.nack)
        self._relays[seq] = relay
        core.send((msg.host, msg.port), encode(Ping(seq, msg.target, core.name)))
        relay.timer = core.timers.call_at(core.clock.now() + core.config.probe_timeout, self._relay_timed_out, seq)

    def _relay_timed_out(self, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None and relay.nack:
            self._core.send(relay.requester, encode(Nack(relay.seq)))

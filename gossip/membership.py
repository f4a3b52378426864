"""The member table and the state machine over it (memberlist's state.go: aliveNode, suspectNode,
deadNode, refute, mergeState), plus reaping.

Every change that others should hear about is re-broadcast through the piggyback queue; every change
a subscriber should see is emitted as an event. Messages about this node itself are never applied:
an accusation is refuted with a higher incarnation, which also costs a point of local health (being
accused is a hint that we are the slow one).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator

from .awareness import Awareness
from .clock import Clock, TimerQueue
from .codec import encode
from .config import GossipConfig
from .events import (Event, MemberDead, MemberJoined, MemberLeft, MemberReaped, MemberSuspect, MemberUpdated,
                     NameConflict)
from .messages import Alive, Dead, MalformedMessage, MessageType, PushNodeState, Suspect
from .state import (FROM_WIRE, TO_WIRE, MemberState, NodeRecord, alive_overrides, dead_overrides, format_address,
                    suspect_overrides)
from .suspicion import Suspicion

log = logging.getLogger("cynode.gossip")

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
_WIRE_OF = TO_WIRE
_ALIVE_T, _SUSPECT_T, _DEAD_T = int(MessageType.ALIVE), int(MessageType.SUSPECT), int(MessageType.DEAD)


class Membership:
    """Not thread-safe; owned by one `Memberlist`."""

    def __init__(self, local: NodeRecord, *, config: GossipConfig, clock: Clock, timers: TimerQueue,
                 awareness: Awareness, rng: random.Random,
                 broadcast: Callable[[str, bytes, Callable[[], None] | None], None],
                 emit: Callable[[Event], None], stats: dict[str, int]) -> None:
        self.local = local
        self.config = config
        self._clock = clock
        self._timers = timers
        self._awareness = awareness
        self._rng = rng
        self._broadcast = broadcast
        self._emit = emit
        self._stats = stats
        self.nodes: dict[str, NodeRecord] = {local.name: local}
        # Other members that are alive or suspect, for O(1) random choice (swap-remove on change).
        self.live: list[NodeRecord] = []
        self._live_pos: dict[str, int] = {}
        # Dead or left members waiting to be reaped; `recent_dead` feeds gossip-to-the-dead.
        self.gone: dict[str, NodeRecord] = {}
        self.recent_dead: list[NodeRecord] = []
        self.leaving = False
        self.conflict: NameConflict | None = None
        self.on_new_member: Callable[[NodeRecord], None] | None = None
        self.on_leave_sent: Callable[[], None] | None = None

    # ---------------------------------------------------------------- queries

    def num_members(self) -> int:
        """Live members including this node: the `n` of every log(n) formula."""
        return len(self.live) + 1

    def __iter__(self) -> Iterator[NodeRecord]:
        return iter(self.nodes.values())

    def random_live(self, count: int, exclude: str = "", alive_only: bool = False) -> list[NodeRecord]:
        """Up to `count` distinct random live members other than `exclude`."""
        live = self.live
        n = len(live)
        if count <= 0 or not n:
            return []
        if n <= count + 1:
            picks = live[:]
            self._rng.shuffle(picks)
        else:
            # One spare draw covers `exclude`; cheaper than random.sample for a few of thousands.
            random = self._rng.random
            chosen: set[int] = set()
            picks = []
            while len(picks) <= count:
                i = int(random() * n)
                if i not in chosen:
                    chosen.add(i)
                    picks.append(live[i])
        out = []
        for rec in picks:
            if rec.name == exclude or (alive_only and rec.state is not ALIVE):
                continue
            out.append(rec)
            if len(out) == count:
                break
        return out

    def is_old_news(self, item: list) -> bool:
        """True when a raw alive/suspect/dead message cannot change anything here, so it need not
        even be decoded: most piggybacked gossip is news this node already has. When unsure, False
        (the full path decides). May raise TypeError/IndexError on malformed items."""
        kind = item[0]
        if kind != _ALIVE_T and kind != _SUSPECT_T and kind != _DEAD_T:
            return False
        name = item[2]
        if type(name) is not str:
            return False
        rec = self.nodes.get(name)
        if rec is None:
            return kind != _ALIVE_T  # suspicion or death of a stranger: ignored anyway
        incarnation = item[1]
        if rec is self.local or type(incarnation) is not int:
            return False
        if incarnation < rec.incarnation:
            return True
        if kind == _ALIVE_T:
            return incarnation == rec.incarnation and rec.host == item[3] and rec.port == item[4]
        if not rec.state.live:
            return True  # suspect or dead at >= incarnation about a dead or left member: ignored
        if kind == _SUSPECT_T:
            suspicion = rec.suspicion
            return (suspicion is not None and incarnation == rec.incarnation
                    and not suspicion.would_confirm(item[3]))
        return False

    def push_states(self) -> list[list]:
        """The whole table in push/pull wire form (including dead and left, so they can refute)."""
        wire = _WIRE_OF
        return [[r.name, r.host, r.port, r.incarnation, wire[r.state], r.meta_bytes] for r in self.nodes.values()]

    # ---------------------------------------------------------------- transitions

    def _set_state(self, rec: NodeRecord, state: MemberState) -> None:
        old = rec.state
        rec.state = state
        rec.state_change = self._clock.now()
        if rec is self.local:
            return
        was_live, is_live = old.live, state.live
        if is_live and not was_live:
            self._live_pos[rec.name] = len(self.live)
            self.live.append(rec)
            self.gone.pop(rec.name, None)
        elif was_live and not is_live:
            index = self._live_pos.pop(rec.name)
            last = self.live.pop()
            if last is not rec:
                self.live[index] = last
                self._live_pos[last.name] = index
            self.gone[rec.name] = rec
            if state is DEAD:
                self.recent_dead.append(rec)

    def _clear_suspicion(self, rec: NodeRecord) -> None:
        if rec.suspicion_timer is not None:
            rec.suspicion_timer.cancel()
            rec.suspicion_timer = None
        rec.suspicion = None

    def on_alive(self, msg: Alive) -> None:
        if self.leaving and msg.node == self.local.name:
            return
        rec = self.nodes.get(msg.node)
        is_new = rec is None
        reclaim = False
        if rec is None:
            # Unknown so far: a placeholder that any incarnation beats, then the normal path.
            rec = NodeRecord(msg.node, msg.host, msg.port, -1, DEAD, self._clock.now(), b"", msg.version)
            self.nodes[msg.node] = rec
        elif rec.host != msg.host or rec.port != msg.port:
            if rec is self.local:
                self._name_conflict(rec, msg)
                return
            dead_long_enough = (rec.state is DEAD and
                                self._clock.now() - rec.state_change >= self.config.dead_node_reclaim_time)
            if rec.state is LEFT or dead_long_enough:
                log.info("gossip: member %s moved from %s to %s", rec.name,
                         format_address(rec.host, rec.port), format_address(msg.host, msg.port))
                reclaim = True
            else:
                self._name_conflict(rec, msg)
                return
        is_local = rec is self.local
        if not reclaim:
            if not is_local and not alive_overrides(rec.state, rec.incarnation, msg.incarnation):
                return
            if is_local and msg.incarnation < rec.incarnation:
                return
        self._clear_suspicion(rec)
        if is_local:
            # Someone talks about us at our incarnation or above: the same news is fine (our own
            # broadcast coming back), anything else (an older life of ours, say) is refuted.
            if msg.incarnation == rec.incarnation and msg.meta == rec.meta_bytes:
                return
            self.refute(msg.incarnation)
            return
        old_state, old_meta = rec.state, rec.meta_bytes
        self._broadcast(msg.node, encode(msg), None)
        rec.incarnation = msg.incarnation
        rec.set_meta(msg.meta)
        rec.host, rec.port, rec.version = msg.host, msg.port, msg.version
        if rec.state is not ALIVE:
            self._set_state(rec, ALIVE)
        if is_new and self.on_new_member is not None:
            self.on_new_member(rec)
        now = self._clock.now()
        if old_state is DEAD or old_state is LEFT:
            if not is_new:
                log.info("gossip: member %s is back (incarnation %d)", rec.name, rec.incarnation)
            self._emit(MemberJoined(rec.snapshot(), now))
        elif old_meta != rec.meta_bytes or old_state is SUSPECT:
            self._emit(MemberUpdated(rec.snapshot(), now))

    def _name_conflict(self, rec: NodeRecord, msg: Alive) -> None:
        self._stats["name_conflicts"] = self._stats.get("name_conflicts", 0) + 1
        event = NameConflict(rec.name, format_address(rec.host, rec.port),
                             format_address(msg.host, msg.port), self._clock.now())
        if rec is self.local:
            # Another node is known under our name at another address: from our side, it holds the
            # name and we claim it. Others keep whichever address they saw first.
            if self.conflict is None:
                log.warning("gossip: node name %r is also used by %s", rec.name, event.claimant)
            event = self.conflict = NameConflict(rec.name, event.claimant, event.holder, event.at)
        else:
            log.warning("gossip: conflicting address for %s: keeping %s, ignoring %s",
                        rec.name, event.holder, event.claimant)
        self._emit(event)

    def on_suspect(self, msg: Suspect) -> None:
        rec = self.nodes.get(msg.node)
        if rec is None or msg.incarnation < rec.incarnation:
            return
        if rec.suspicion is not None and msg.incarnation == rec.incarnation:
            # Already suspect: an independent accusation shortens the timeout (Lifeguard) and is
            # worth passing on, so that others can count it too.
            if rec.suspicion.confirm(msg.accuser):
                self._stats["confirmations"] = self._stats.get("confirmations", 0) + 1
                self._broadcast(msg.node, encode(msg), None)
                self._arm_suspicion(rec)
            return
        if not suspect_overrides(rec.state, rec.incarnation, msg.incarnation):
            return
        if rec is self.local:
            if not self.leaving:
                self.refute(msg.incarnation)
            return
        self._broadcast(msg.node, encode(msg), None)
        self._clear_suspicion(rec)
        rec.incarnation = msg.incarnation
        if rec.state is not SUSPECT:
            self._set_state(rec, SUSPECT)
        n = self.num_members()
        # Confirmations wanted to reach the minimum: two probe periods short of suspicion_mult,
        # as we have no phase relation with our peers; none at all in a cluster too small to give them.
        k = self.config.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        min_timeout = self.config.suspicion_min(n)
        max_timeout = self.config.suspicion_max_timeout_mult * min_timeout
        rec.suspicion = Suspicion(msg.accuser, k, min_timeout, max_timeout, self._clock.now())
        self._arm_suspicion(rec)
        self._stats["suspicions"] = self._stats.get("suspicions", 0) + 1
        log.debug("gossip: %s is suspect (accused by %s)", rec.name, msg.accuser)
        self._emit(MemberSuspect(rec.snapshot(), self._clock.now()))

    def _arm_suspicion(self, rec: NodeRecord) -> None:
        suspicion = rec.suspicion
        assert suspicion is not None
        if rec.suspicion_timer is not None:
            rec.suspicion_timer.cancel()
        rec.suspicion_timer = self._timers.call_at(suspicion.deadline, self._suspicion_expired, rec, suspicion)

    def _suspicion_expired(self, rec: NodeRecord, suspicion: Suspicion) -> None:
        if rec.suspicion is not suspicion or rec.state is not SUSPECT:
            return
        log.info("gossip: %s declared dead: suspect for %.1fs, %d confirmation(s)", rec.name,
                 self._clock.now() - suspicion.start, suspicion.n)
        self.on_dead(Dead(rec.incarnation, rec.name, self.local.name))

    def on_dead(self, msg: Dead) -> None:
        rec = self.nodes.get(msg.node)
        if rec is None or msg.incarnation < rec.incarnation:
            return
        self._clear_suspicion(rec)
        if not dead_overrides(rec.state, rec.incarnation, msg.incarnation):
            return
        if rec is self.local:
            if not self.leaving:
                self.refute(msg.incarnation)
                return
            self._broadcast(msg.node, encode(msg), self.on_leave_sent)
        else:
            self._broadcast(msg.node, encode(msg), None)
        rec.incarnation = msg.incarnation
        left = msg.accuser == msg.node
        self._set_state(rec, LEFT if left else DEAD)
        if rec is not self.local:
            log.info("gossip: member %s %s", rec.name, "left" if left else "is dead")
        event = MemberLeft if left else MemberDead
        self._emit(event(rec.snapshot(), self._clock.now()))

    def refute(self, accused_incarnation: int) -> None:
        """Outbid an accusation about ourselves with a higher incarnation."""
        local = self.local
        incarnation = max(local.incarnation, accused_incarnation) + 1
        local.incarnation = incarnation
        self._awareness.apply_delta(1)
        self._stats["refutes"] = self._stats.get("refutes", 0) + 1
        self.broadcast_local_alive()

    def broadcast_local_alive(self) -> None:
        local = self.local
        alive = Alive(local.incarnation, local.name, local.host, local.port, local.meta_bytes, local.version)
        self._broadcast(local.name, encode(alive), None)

    def leave(self) -> None:
        """Announce our own graceful departure (a dead message from ourselves about ourselves)."""
        self.leaving = True
        self.on_dead(Dead(self.local.incarnation, self.local.name, self.local.name))

    def merge(self, states: list[list]) -> None:
        """Apply a peer's table (push/pull, wire form). A peer's `dead` is only a suspicion here: we
        have not seen the evidence, and the member gets a chance to refute."""
        nodes = self.nodes
        local = self.local
        wire_of = _WIRE_OF
        malformed = 0
        for raw in states:
            try:
                rec = nodes.get(raw[0])
                if (rec is not None and rec is not local and rec.incarnation == raw[3]
                        and wire_of[rec.state] == raw[4] and rec.meta_bytes == raw[5]):
                    continue  # the common case: we agree
                s = PushNodeState.from_wire(raw)
            except (MalformedMessage, IndexError, TypeError):
                malformed += 1
                continue
            state = FROM_WIRE[s.state]
            if state is ALIVE:
                self.on_alive(Alive(s.incarnation, s.node, s.host, s.port, s.meta))
            elif state is LEFT:
                self.on_dead(Dead(s.incarnation, s.node, s.node))
            else:
                self.on_suspect(Suspect(s.incarnation, s.node, local.name))
        if malformed:
            self._stats["dropped_malformed"] = self._stats.get("dropped_malformed", 0) + malformed

    def prime(self, name: str, host: str, port: int, meta_bytes: bytes) -> None:
        """Know a member as alive at incarnation 0 without telling anyone (simulation start-up)."""
        if name in self.nodes:
            return
        rec = NodeRecord(name, host, port, 0, DEAD, self._clock.now(), meta_bytes)
        self.nodes[name] = rec
        self._set_state(rec, ALIVE)
        if self.on_new_member is not None:
            self.on_new_member(rec)

    # ---------------------------------------------------------------- housekeeping

    def reap(self) -> None:
        """Forget members dead or left for longer than their timeout."""
        now = self._clock.now()
        for name, rec in list(self.gone.items()):
            timeout = self.config.tombstone_timeout if rec.state is LEFT else self.config.reconnect_timeout
            if now - rec.state_change > timeout:
                del self.gone[name]
                del self.nodes[name]
                self._emit(MemberReaped(rec.snapshot(), now))
        cutoff = now - self.config.gossip_to_the_dead_time
        self.recent_dead = [r for r in self.recent_dead if r.state is DEAD and r.state_change >= cutoff]

    def recent_dead_targets(self) -> list[NodeRecord]:
        cutoff = self._clock.now() - self.config.gossip_to_the_dead_time
        recent = self.recent_dead
        start = 0
        while start < len(recent) and recent[start].state_change < cutoff:
            start += 1
        if start:
            del recent[:start]
        return list({id(r): r for r in recent if r.state is DEAD}.values())

    def dead_members(self) -> list[NodeRecord]:
        return [r for r in self.gone.values() if r.state is DEAD]

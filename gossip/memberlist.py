"""The sans-IO gossip core: one node's whole protocol, driven by its caller.

Feed it what arrives (`handle_packet`, `handle_stream`, `handle_stream_reply`) and call `tick()`
when `next_deadline()` has come; each returns what to do next (outputs.py: packets to send, TCP
exchanges to run, join results) and what happened (events.py). It reads time only from its
`Clock` and randomness only from its `random.Random`, so a test can step it with a fake clock and a
simulation of a thousand nodes is reproducible from one seed.

Beyond probing (probe.py) and the state machine (membership.py) it runs three periodic jobs:
- gossip: every `gossip_interval`, queued state changes go to `gossip_nodes` random members (and
  recently dead ones, so they can refute); the round sleeps while there is nothing to send;
- push/pull: every `push_pull_interval` (scaled up beyond 32 members), a full table exchange over
  TCP with one random member, which repairs whatever gossip lost;
- reconnect and reap (from Serf): a random dead member is offered a push/pull now and then, so the
  two halves of a healed partition find each other again; members dead or left for long are
  forgotten.
"""

from __future__ import annotations

import itertools
import math
import logging
import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

from .awareness import Awareness
from .broadcast_queue import BroadcastQueue
from .clock import Clock, MonotonicClock, Timer, TimerQueue
from .codec import (COMPOUND_HEADER_OVERHEAD, Codec, WireError, compound, decode_message, decode_payload,
                    encode, encode_meta)
from .config import GossipConfig, lan
from .events import Event, MemberJoined, MemberUpdated
from .keyring import Keyring
from .membership import Membership
from .messages import PROTOCOL_VERSION, Ack, Alive, Dead, IndirectPing, Nack, Ping, PushPull, Suspect
from .outputs import Address, JoinResult, SendPacket, StreamRequest
from .probe import Prober
from .state import Member, MemberState, NodeRecord

log = logging.getLogger("cynode.gossip")

Output = SendPacket | StreamRequest | JoinResult | Event

_PUSH_PULL, _JOIN, _PING = "push_pull", "join", "ping"


class Memberlist:
    """One node's gossip protocol. Not thread-safe: drive it from one thread (or one event loop)."""

    def __init__(self, name: str, address: Address, *, config: GossipConfig | None = None,
                 meta: Mapping[str, Any] | None = None, cluster: str = "default", keyring: Keyring | None = None,
                 clock: Clock | None = None, rng: random.Random | None = None, incarnation: int = 0) -> None:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"{name!r} is not a node name (non-empty, no spaces)")
        self.name = name
        self.config = config or lan()
        self.clock = clock or MonotonicClock()
        self.rng = rng or random.Random()
        self.codec = Codec(cluster, keyring)
        self.timers = TimerQueue()
        self.awareness = Awareness(self.config.awareness_max_multiplier)
        self.stats: Counter[str] = Counter()
        self._out: list[Output] = []
        self._seq = itertools.count(1)
        self._streams: dict[int, tuple[str, Any]] = {}
        self.local = NodeRecord(name, address[0], address[1], incarnation, MemberState.ALIVE, self.clock.now(),
                                encode_meta(meta or {}), PROTOCOL_VERSION)
        self.queue = BroadcastQueue(self._transmit_limit, self.config.max_queued_broadcasts)
        self.membership = Membership(self.local, config=self.config, clock=self.clock, timers=self.timers,
                                     awareness=self.awareness, rng=self.rng, broadcast=self._broadcast,
                                     emit=self._emit, stats=self.stats)
        self.prober = Prober(self)
        self.membership.on_new_member = self.prober.insert
        self.membership.on_leave_sent = self._leave_sent
        self._gossip_timer: Timer | None = None
        self._limit_n, self._limit = -1, 0
        self._gossip_phase = self.rng.uniform(0, self.config.gossip_interval)
        self._periodic: list[Timer] = []
        self._started = False
        self._stopped = False
        self.leave_done = False

    # ------------------------------------------------------------------ public, sans-IO

    def start(self) -> list[Output]:
        """Begin probing, gossiping and syncing; emits `MemberJoined` for this node."""
        if self._started:
            return self._drain()
        self._started = True
        now = self.clock.now()
        self.prober.start()
        cfg = self.config
        if cfg.push_pull_interval > 0:
            first = now + self.rng.uniform(0, cfg.push_pull_period(self.membership.num_members()))
            self._periodic.append(self.timers.call_at(first, self._push_pull_round))
        self._periodic.append(self.timers.call_at(now + cfg.reap_interval, self._reap_round))
        self._periodic.append(
            self.timers.call_at(now + self.rng.uniform(0.5, 1.0) * cfg.reconnect_interval, self._reconnect_round))
        self._out.append(MemberJoined(self.local.snapshot(), now))
        return self._drain()

    def stop(self) -> None:
        """Stop every timer; the core answers nothing afterwards."""
        self._stopped = True
        self.prober.stop()
        for timer in self._periodic:
            timer.cancel()
        if self._gossip_timer is not None:
            self._gossip_timer.cancel()

    def tick(self) -> list[Output]:
        """Run every timer that is due by the clock."""
        if self._stopped:
            return []
        self.timers.run_due(self.clock.now())
        return self._drain()

    def next_deadline(self) -> float:
        """Clock time at which `tick()` has work; +inf when idle."""
        return float("inf") if self._stopped else self.timers.next_deadline()

    def handle_packet(self, source: Address, data: bytes) -> list[Output]:
        """One UDP datagram from `source`."""
        if self._stopped:
            return []
        stats = self.stats
        stats["packets_received"] += 1
        stats["bytes_received"] += len(data)
        try:
            items = decode_payload(self.codec.open(data))
        except WireError as exc:
            self._dropped(source, exc)
            return self._drain()
        old_news = self.membership.is_old_news
        for item in items:
            try:
                if old_news(item):
                    continue
            except (TypeError, IndexError):
                pass  # malformed: decode_message says how
            try:
                msg = decode_message(item)
            except WireError as exc:
                self._dropped(source, exc)
                continue
            kind = type(msg)
            if kind is Ping:
                if msg.target == self.name or not msg.target:
                    self.send(source, encode(Ack(msg.seq)))
                else:
                    stats["pings_for_other_node"] += 1
            elif kind is Ack:
                self.prober.on_ack(msg.seq)
            elif kind is Alive:
                self.membership.on_alive(msg)
            elif kind is Suspect:
                self.membership.on_suspect(msg)
            elif kind is Dead:
                self.membership.on_dead(msg)
            elif kind is IndirectPing:
                self.prober.on_indirect_ping(source, msg)
            elif kind is Nack:
                self.prober.on_nack(msg.seq)
            else:
                stats["dropped_unexpected"] += 1
        return self._drain()

    def handle_stream(self, source: Address, data: bytes) -> tuple[bytes | None, list[Output]]:
        """One TCP frame from `source`; returns the frame to answer with (None: close) and outputs."""
        if self._stopped:
            return None, []
        self.stats["streams_received"] += 1
        self.stats["bytes_received"] += len(data)
        try:
            items = decode_payload(self.codec.open(data))
            msg = decode_message(items[0]) if items else None
        except WireError as exc:
            self._dropped(source, exc)
            return None, self._drain()
        reply: bytes | None = None
        if isinstance(msg, PushPull):
            # Answer with our table as it was before theirs is merged, as memberlist does.
            reply = self._seal_stream(self._push_pull_message(join=False))
            self._merge(msg)
        elif isinstance(msg, Ping):
            if msg.target == self.name or not msg.target:
                reply = self._seal_stream(encode(Ack(msg.seq)))
        else:
            self.stats["dropped_unexpected"] += 1
        if reply is not None:
            self.stats["bytes_sent"] += len(reply)
        return reply, self._drain()

    def handle_stream_reply(self, token: int, data: bytes | None) -> list[Output]:
        """The answer to a `StreamRequest` (None: it failed or timed out)."""
        kind, context = self._streams.pop(token, (None, None))
        if kind is None or self._stopped:
            return self._drain()
        msg = None
        error = None
        if data is None:
            error = "no answer (unreachable, not a gossip port, or a node without our cluster key)"
        else:
            self.stats["bytes_received"] += len(data)
            try:
                items = decode_payload(self.codec.open(data))
                msg = decode_message(items[0]) if items else None
            except WireError as exc:
                self._dropped(context if kind == _JOIN else None, exc)
                error = f"unreadable answer ({exc})"
        if kind == _PING:
            if isinstance(msg, Ack):
                self.stats["tcp_ping_acks"] += 1
                self.prober.on_ack(msg.seq)
            return self._drain()
        holder = None
        if isinstance(msg, PushPull):
            conflict_before = self.membership.conflict
            self._merge(msg)
            conflict = self.membership.conflict
            if kind == _JOIN and conflict is not None and conflict is not conflict_before:
                holder = conflict.holder
                error = f"name conflict: {self.name!r} is already held by a live member at {holder}"
        elif error is None:
            error = "unexpected answer"
        if kind == _JOIN:
            self._out.append(JoinResult(token, context, error, holder))
        elif error is not None:
            self.stats["push_pull_failures"] += 1
        return self._drain()

    def join(self, address: Address) -> list[Output]:
        """Start a full sync with a seed; its `JoinResult` comes out of `handle_stream_reply`."""
        self._stream(address, self._push_pull_message(join=True), _JOIN, address)
        return self._drain()

    def update_meta(self, meta: Mapping[str, Any]) -> list[Output]:
        """Publish new metadata (raises `MetadataError` when too large or not serialisable)."""
        data = encode_meta(meta)
        local = self.local
        if data == local.meta_bytes:
            return self._drain()
        local.set_meta(data)
        local.incarnation += 1
        self.membership.broadcast_local_alive()
        self._out.append(MemberUpdated(local.snapshot(), self.clock.now()))
        return self._drain()

    def leave(self) -> list[Output]:
        """Announce a graceful leave; `leave_done` turns true once the news has been sent around."""
        if self.membership.leaving:
            return self._drain()
        self.prober.stop()
        self.membership.leave()
        if not self.membership.live:
            self.leave_done = True
        self._gossip_round()
        return self._drain()

    def members(self) -> list[Member]:
        """Every member this node knows, itself included, dead and left ones until reaped."""
        return sorted((rec.snapshot() for rec in self.membership), key=lambda m: m.id)

    def member(self, name: str) -> Member | None:
        rec = self.membership.nodes.get(name)
        return None if rec is None else rec.snapshot()

    def num_members(self) -> int:
        """Live members (alive or suspect), this node included."""
        return self.membership.num_members()

    @property
    def health_score(self) -> int:
        """Lifeguard local health: 0 is healthy, up to awareness_max_multiplier - 1."""
        return self.awareness.score

    def prime(self, members: list[tuple[str, Address, Mapping[str, Any] | bytes]]) -> list[Output]:
        """Know members as alive without contacting anyone: a simulation's steady-state start."""
        for name, address, meta in members:
            if name != self.name:
                data = meta if isinstance(meta, bytes) else encode_meta(meta)
                self.membership.prime(name, address[0], address[1], data)
        return self._drain()

    # ------------------------------------------------------------------ sending

    def next_seq(self) -> int:
        return next(self._seq)

    def send(self, address: Address, *messages: bytes) -> None:
        """Send encoded messages in one packet, filling the rest with piggybacked broadcasts."""
        used = sum(len(m) for m in messages)
        avail = self.config.udp_buffer_size - self.codec.overhead - COMPOUND_HEADER_OVERHEAD - used
        extra = self.queue.get(0, avail) if self.queue else []
        self._send_payload(address, compound([*messages, *extra]))

    def _send_payload(self, address: Address, payload: bytes) -> None:
        data = self.codec.seal(payload)
        stats = self.stats
        stats["packets_sent"] += 1
        stats["bytes_sent"] += len(data)
        self._out.append(SendPacket(address, data))

    def _seal_stream(self, encoded: bytes) -> bytes:
        return self.codec.seal(compound([encoded]))

    def _stream(self, address: Address, encoded: bytes, kind: str, context: Any, timeout: float | None = None) -> None:
        token = self.next_seq()
        self._streams[token] = (kind, context)
        data = self._seal_stream(encoded)
        self.stats["streams_sent"] += 1
        self.stats["bytes_sent"] += len(data)
        self._out.append(StreamRequest(token, address, data, timeout or self.config.tcp_timeout))

    def stream_ping(self, address: Address, ping: Ping, timeout: float) -> None:
        self._stream(address, encode(ping), _PING, ping.seq, timeout)

    def _broadcast(self, key: str, message: bytes, on_done: Any) -> None:
        self.queue.queue(key, message, on_done)
        if self._gossip_timer is None and self._started and not self._stopped:
            # The gossip round sleeps while the queue is empty and wakes on its own ticker's
            # schedule: this node's phase, so nodes do not gossip in lock-step.
            interval = self.config.gossip_interval
            now = self.clock.now()
            ticks = math.floor((now - self._gossip_phase) / interval) + 1
            self._gossip_timer = self.timers.call_at(self._gossip_phase + ticks * interval, self._gossip_round)

    def _transmit_limit(self) -> int:
        n = self.membership.num_members()
        if n != self._limit_n:
            self._limit_n, self._limit = n, self.config.retransmit_limit(n)
        return self._limit

    def _leave_sent(self) -> None:
        self.leave_done = True

    def _drain(self) -> list[Output]:
        out = self._out
        if not out:
            return []
        self._out = []
        return out

    def _emit(self, event: Event) -> None:
        self._out.append(event)

    def _dropped(self, source: Address | None, exc: WireError) -> None:
        self.stats[f"dropped_{exc.reason}"] += 1
        # Once per reason: a misconfigured neighbour would otherwise flood the log.
        if self.stats[f"dropped_{exc.reason}"] == 1:
            log.warning("gossip: dropped traffic from %s: %s", source, exc)

    # ------------------------------------------------------------------ periodic jobs

    def _gossip_round(self) -> None:
        self._gossip_timer = None
        if not self.queue or self._stopped:
            return
        members = self.membership
        targets = members.random_live(self.config.gossip_nodes)
        dead = members.recent_dead_targets()
        if dead:
            pool = targets + dead
            targets = self.rng.sample(pool, min(len(pool), self.config.gossip_nodes))
        avail = self.config.udp_buffer_size - self.codec.overhead - COMPOUND_HEADER_OVERHEAD
        for rec in targets:
            messages = self.queue.get(0, avail)
            if not messages:
                break
            self._send_payload(rec.address, compound(messages))
        if self.queue:
            self._gossip_timer = self.timers.call_at(self.clock.now() + self.config.gossip_interval,
                                                     self._gossip_round)

    def _push_pull_message(self, join: bool) -> bytes:
        return encode(PushPull(join, self.name, self.membership.push_states()))

    def _merge(self, msg: PushPull) -> None:
        self.stats["push_pulls_merged"] += 1
        self.membership.merge(msg.states)

    def _push_pull_round(self) -> None:
        n = self.membership.num_members()
        self._periodic.append(self.timers.call_at(self.clock.now() + self.config.push_pull_period(n),
                                                  self._push_pull_round))
        if self.membership.leaving:
            return
        peers = self.membership.random_live(1, alive_only=True)
        if peers:
            self._stream(peers[0].address, self._push_pull_message(join=False), _PUSH_PULL, peers[0].name)

    def _reconnect_round(self) -> None:
        self._periodic.append(self.timers.call_at(self.clock.now() + self.config.reconnect_interval,
                                                  self._reconnect_round))
        if self.membership.leaving:
            return
        dead = self.membership.dead_members()
        # Serf's rule: the more of the cluster is dead, the more often we try; a lone node always does.
        if dead and self.rng.random() < len(dead) / self.membership.num_members():
            rec = self.rng.choice(dead)
            self.stats["reconnects"] += 1
            self._stream(rec.address, self._push_pull_message(join=False), _PUSH_PULL, rec.name)

    def _reap_round(self) -> None:
        self._periodic = [t for t in self._periodic if not t.cancelled]
        self._periodic.append(self.timers.call_at(self.clock.now() + self.config.reap_interval, self._reap_round))
        self.membership.reap()

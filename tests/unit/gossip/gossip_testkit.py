"""Helpers to drive one sans-IO gossip core by hand: a fake clock, crafted packets, decoded outputs."""

from __future__ import annotations

import random
from collections.abc import Iterable

from cynode.gossip import FakeClock, GossipConfig, Memberlist, SendPacket, StreamRequest, lan
from cynode.gossip.codec import Codec, compound, decode_message, decode_payload, encode
from cynode.gossip.keyring import Keyring
from cynode.gossip.messages import Ack, Message, Ping

CLUSTER = "test"


def address_of(name: str) -> tuple[str, int]:
    return (f"{name}.test", 7946)


class Harness:
    """One core named `me` that knows `members` (alive, incarnation 0), on a fake clock."""

    def __init__(self, members: Iterable[str] = ("a", "b", "c", "d"), *, config: GossipConfig | None = None,
                 name: str = "me", seed: int = 1, keyring: Keyring | None = None, meta: dict | None = None) -> None:
        self.clock = FakeClock(1000.0)
        self.codec = Codec(CLUSTER, keyring)
        self.core = Memberlist(name, address_of(name), config=config or lan(), meta=meta, cluster=CLUSTER,
                               keyring=keyring, clock=self.clock, rng=random.Random(seed))
        self.core.prime([(m, address_of(m), {}) for m in members])
        self.outputs: list = list(self.core.start())

    # feeding -------------------------------------------------------------

    def packet(self, *messages: Message) -> bytes:
        return self.codec.seal(compound([encode(m) for m in messages]))

    def feed(self, *messages: Message, source: str = "a") -> list:
        out = self.core.handle_packet(address_of(source), self.packet(*messages))
        self.outputs += out
        return out

    def run_until(self, when: float, *, answer: bool = False) -> list:
        """Advance the clock to `when`, running every deadline on the way (no sleeping). With
        `answer`, every member pinged acks at once, as healthy peers would."""
        out: list = []
        while (deadline := self.core.next_deadline()) <= when:
            self.clock.set(max(deadline, self.clock.now()))
            step = self.core.tick()
            out += step
            if answer:
                for addr, msgs in self.sent(step):
                    for m in msgs:
                        if isinstance(m, Ping):
                            out += self.core.handle_packet(addr, self.packet(Ack(m.seq)))
        self.clock.set(max(when, self.clock.now()))
        self.outputs += out
        return out

    def run_for(self, seconds: float, *, answer: bool = False) -> list:
        return self.run_until(self.clock.now() + seconds, answer=answer)

    # reading -------------------------------------------------------------

    def sent(self, outputs: list | None = None) -> list[tuple[tuple[str, int], list[Message]]]:
        """Every packet sent, decoded: (destination, [messages])."""
        found = []
        for out in self.outputs if outputs is None else outputs:
            if isinstance(out, SendPacket):
                items = decode_payload(self.codec.open(out.data))
                found.append((out.address, [decode_message(i) for i in items]))
        return found

    def messages(self, kind: type, outputs: list | None = None) -> list[tuple[tuple[str, int], Message]]:
        return [(addr, m) for addr, msgs in self.sent(outputs) for m in msgs if isinstance(m, kind)]

    def streams(self, outputs: list | None = None) -> list[StreamRequest]:
        return [o for o in (self.outputs if outputs is None else outputs) if isinstance(o, StreamRequest)]

    def events(self, kind: type, outputs: list | None = None) -> list:
        return [o for o in (self.outputs if outputs is None else outputs) if isinstance(o, kind)]

    def state(self, name: str) -> str | None:
        member = self.core.member(name)
        return None if member is None else str(member.state)

    def incarnation(self, name: str) -> int:
        member = self.core.member(name)
        assert member is not None
        return member.incarnation

    @property
    def now(self) -> float:
        return self.clock.now()

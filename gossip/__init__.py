"""SWIM + Lifeguard membership (HashiCorp memberlist's design). Knows nothing about LLMs.

The daemon uses `GossipNode` on a `UdpTransport`; tests and simulations use `MockNetwork` and
`SimCluster`; `Memberlist` is the sans-IO core underneath all of them.
"""

from .clock import Clock, FakeClock, MonotonicClock, SimScheduler
from .codec import META_MAX_BYTES, WireError
from .config import PROFILES, GossipConfig, lan, local, preset, wan
from .errors import GossipError, JoinError, MetadataError, NameConflictError
from .events import (Event, MemberDead, MemberEvent, MemberJoined, MemberLeft, MemberReaped, MemberSuspect,
                     MemberUpdated, NameConflict)
from .keyring import Keyring
from .memberlist import Memberlist, Output
from .mock_network import MockNetwork, MockTransport
from .node import GossipNode, Subscription
from .outputs import Address, JoinResult, SendPacket, StreamRequest
from .simulation import SimCluster
from .state import Member, MemberState
from .transport import DEFAULT_PORT, Transport, TransportError, resolve, split_address
from .udp_transport import UdpTransport

__all__ = [
    "Address", "Clock", "DEFAULT_PORT", "Event", "FakeClock", "GossipConfig", "GossipError", "GossipNode",
    "JoinError", "JoinResult", "Keyring", "META_MAX_BYTES", "Member", "MemberDead", "MemberEvent", "MemberJoined",
    "MemberLeft", "MemberReaped", "MemberState", "MemberSuspect", "MemberUpdated", "Memberlist", "MetadataError",
    "MockNetwork", "MockTransport", "MonotonicClock", "NameConflict", "NameConflictError", "Output", "PROFILES",
    "SendPacket", "SimCluster", "SimScheduler", "StreamRequest", "Subscription", "Transport", "TransportError",
    "UdpTransport", "WireError", "lan", "local", "preset", "resolve", "split_address", "wan",
]

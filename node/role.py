"""The lifecycle every role implements, and what the daemon hands each role when it builds it.

The daemon (the composition root) builds a `RoleContext` once and passes it to each role's
constructor; roles never reach for globals, the environment or each other.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import NodeConfig
from .http_routes import Readiness
from .rpc.local import LocalServices
from .rpc.server import RpcServer
from .telemetry import Telemetry

if TYPE_CHECKING:
    import grpc.aio
    from aiohttp import web

    from .api_keys import ApiKeyStore
    from .gossip_agent import GossipAgent
    from .peer_auth import PeerAuth
    from .redis_conn import RedisConnection


@dataclass
class RoleContext:
    config: NodeConfig
    telemetry: Telemetry
    peer_auth: PeerAuth
    redis: RedisConnection | None = None
    boot_id: str = ""
    readiness: Readiness = dict
    api_keys: ApiKeyStore | None = None
    gossip: GossipAgent | None = None
    # Services of this same process: a channel to one of them skips the network (cynode.rpc.local).
    local: LocalServices = field(default_factory=LocalServices)
    # Addresses of services this same node runs, for roles that would otherwise need gossip
    # to find them (e.g. the coordinator's view of the local worker). Filled by the daemon.
    local_services: dict[str, str] = field(default_factory=dict)
    # Operator routes every HTTP port of the node serves (status page, Prometheus discovery); the
    # gateway adds them to its app. Filled by the daemon.
    http_routes: list[web.RouteDef] = field(default_factory=list)

    def channel(self, address: str) -> grpc.aio.Channel:
        """A channel to a peer's service: in-process when this node serves it, else mutually authenticated TLS (cynode.peer_auth)."""
        return self.local.channel(address) or self.peer_auth.channel(address)

    def rpc_server(self, role: str, listen: str) -> RpcServer:
        """The gRPC server of `role` ("worker", "coordinator"), reachable in-process too."""
        advertised = self.gossip.service_address(role) if self.gossip is not None else listen
        return RpcServer(role, listen, local=self.local, addresses=(advertised,),
                         credentials=self.peer_auth.server_credentials())


class Role(abc.ABC):
    """A role the daemon starts, drains and stops. Each role owns its background tasks."""

    name: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Bring the role up; return once it serves. Raise StartupError with a clear reason if it cannot."""

    async def begin_drain(self) -> None:
        """SIGTERM arrived: before any role drains, give up at once what a peer can take over (the
        coordinator's leadership), so the hand-over does not wait for streams to finish."""

    async def drain(self, timeout: float) -> None:
        """Stop taking new work and wait up to `timeout` seconds for in-flight work to finish."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Release everything; must not raise, and must be safe to call after a failed start."""

    async def reload(self) -> None:
        """SIGHUP: re-read what this role reads from files, without dropping work in progress.
        A bad file is logged and the old state kept; must not raise."""

    def readiness(self) -> tuple[bool, str]:
        """(ready, detail) for /readyz."""
        return True, "ok"

"""The daemon's gossip agent: this node's metadata, joining the seeds, and the member list.

Every node runs gossip. Its metadata (a small, size-bounded map) tells peers what it is:

    roles      ["gateway", "coordinator", "worker"]
    version    cynode version
    addr       {"gateway": host:port, "coordinator": ..., "worker": ..., "metrics": ...}
    ...        what roles publish: a worker adds models, backend, active, capacity, weight, tags,
               free_mem; coordinators read those to find workers.

`cynode.gossip` knows nothing of this schema; it is cynode's, and lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from cynode.gossip import (
    Event,
    GossipError,
    GossipNode,
    JoinError,
    Keyring,
    Member,
    NameConflict,
    NameConflictError,
    UdpTransport,
    preset,
)

from . import __version__
from .config import NodeConfig, connect_host, join_host_port, split_host_port
from .errors import StartupError
from .tasks import BackgroundTasks
from .telemetry import Telemetry

log = logging.getLogger(__name__)

JOIN_RETRY_S = 15.0  # a seed that is down is tried again this often, forever


class GossipAgent:
    def __init__(self, config: NodeConfig, keys: tuple[bytes, ...], telemetry: Telemetry, roles: list[str]) -> None:
        self._config = config
        self._keys = keys
        self._meta: dict[str, Any] = {"roles": roles, "version": __version__, "addr": self._service_addresses(roles)}
        self.node: GossipNode | None = None
        self._tasks = BackgroundTasks("gossip")
        self._members_gauge = telemetry.gauge("gossip_members", "Members of the cluster by state", ("state",))
        self._health_gauge = telemetry.gauge("gossip_health_score", "Lifeguard local health (0 is healthy)")

    def _host(self) -> str:
        """The address peers use for this node's services when they bind every interface."""
        if self._config.node.advertise:
            return self._config.node.advertise
        host, _ = split_host_port(self._config.gossip.bind)
        if host not in ("0.0.0.0", "::", ""):
            return host
        return _primary_address()

    def _service_addresses(self, roles: list[str]) -> dict[str, str]:
        listens = {"gateway": self._config.gateway.listen, "coordinator": self._config.coordinator.listen,
                   "worker": self._config.worker.listen}
        addresses = {"metrics": self._config.metrics.listen, **{r: listens[r] for r in roles}}
        result = {}
        for name, listen in addresses.items():
            host, port = split_host_port(listen)
            result[name] = join_host_port(self._host() if host in ("0.0.0.0", "::", "") else connect_host(host), port)
        return result

    async def start(self) -> None:
        cfg = self._config
        _, port = split_host_port(cfg.gossip.bind)
        self.node = GossipNode(
            cfg.node.id, UdpTransport(cfg.gossip.bind), config=preset(cfg.gossip.profile), meta=self._meta,
            cluster=cfg.cluster.name, keyring=Keyring(self._keys), advertise=join_host_port(self._host(), port),
        )
        try:
            await self.node.start()
        except (GossipError, OSError) as exc:
            raise StartupError(f"[gossip] bind {cfg.gossip.bind!r}: {exc}") from exc
        self.node.add_listener(self._on_event)
        self._members_gauge.labels("alive").set_function(lambda: self._count("alive"))
        for state in ("suspect", "dead", "left"):
            self._members_gauge.labels(state).set_function(lambda s=state: self._count(s))
        self._health_gauge.set_function(lambda: self.node.health_score if self.node else 0)
        if cfg.cluster.seeds:
            self._tasks.spawn(self._join_forever(), "join")

    async def _join_forever(self) -> None:
        """Join through the seeds; keep trying while none answers (they may start after us)."""
        seeds = list(self._config.cluster.seeds)
        while True:
            try:
                joined = await self.node.join(seeds)
                log.info("gossip: joined the cluster through %d of %d seed(s)", joined, len(seeds))
                return
            except NameConflictError as exc:
                log.error("gossip: %s; give this node another [node] id", exc)
                return
            except (JoinError, GossipError, OSError) as exc:
                log.warning("gossip: no seed answered (%s); trying again in %.0fs", exc, JOIN_RETRY_S)
            await asyncio.sleep(JOIN_RETRY_S)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, NameConflict):
            log.error("gossip: another node claims the name %r; give one of them another [node] id", self._config.node.id)
        elif event.member.id != self._config.node.id and event.kind in ("joined", "dead", "left", "suspect"):
            log.info("gossip: %s is %s (%s)", event.member.id, event.kind, event.member.address)

    def _count(self, state: str) -> int:
        return sum(1 for m in self.members_raw() if str(m.state) == state)

    def service_address(self, role: str) -> str:
        """Where peers reach this node's `role` service (the address gossip publishes)."""
        return self._meta["addr"][role]

    def publish(self, **fields: Any) -> None:
        """Merge role facts into this node's metadata; peers see it within a gossip round or two."""
        self._meta.update(fields)
        if self.node is not None:
            self.node.update_meta(self._meta)

    def members_raw(self) -> list[Member]:
        return self.node.members() if self.node else []

    def members(self) -> list[dict[str, Any]]:
        """The `/v1/cluster/members` entries (ARCHITECTURE section 12)."""
        entries = []
        for member in sorted(self.members_raw(), key=lambda m: m.id):
            entry = member.to_dict()
            entry["roles"] = list(member.meta.get("roles", []))
            entries.append(entry)
        return entries

    def add_listener(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        return self.node.add_listener(listener)

    async def stop(self, graceful: bool) -> None:
        await self._tasks.close()
        if self.node is None:
            return
        if graceful:
            with contextlib.suppress(Exception):
                await self.node.leave()  # tell peers now, rather than have them detect a failure
        await self.node.stop()


def _primary_address() -> str:
    """This host's address as its own name resolves; loopback when it does not. Multi-host
    clusters should set [node] advertise explicitly."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"

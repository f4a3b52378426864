"""The daemon's operator-facing parts, owned in one place: systemd notifications and the watchdog,
this node's recent figures in gossip, what SIGHUP re-reads, and the status page's routes.

The daemon builds one `Operations` before start-up (so the watchdog and STATUS= lines cover a long
model load), `attach`es the node's parts once they exist, and closes it last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from cynode.gossip import MetadataError

from .api_keys import ApiKeyStore
from .config import NodeConfig
from .node_stats import Sampler, read_registry
from .operator_view import OperatorView
from .prometheus_sd import LIVE_STATES
from .reload_hooks import KeyConsumer, ReloadHooks, api_keys_hook, keyring_hook
from .status_page import operator_routes
from .systemd import Notifier, ping_watchdog, report_status
from .tasks import BackgroundTasks
from .telemetry import Telemetry

if TYPE_CHECKING:
    from .gossip_agent import GossipAgent
    from .redis_conn import RedisConnection

log = logging.getLogger(__name__)

STATS_EVERY_S = 5.0


class Operations:
    def __init__(self, config: NodeConfig, notifier: Notifier, status_line: Callable[[], str]) -> None:
        self.config = config
        self.notifier = notifier
        self.hooks = ReloadHooks()
        self.view = OperatorView(config.node.id, config.cluster.name, api_keys=ApiKeyStore(()))
        self._status_line = status_line
        self._sampler = Sampler()
        self._tasks = BackgroundTasks("operations")

    def supervise(self) -> None:
        """Start the watchdog pings and the STATUS= reporter (call first thing on the loop)."""
        self._spawn(ping_watchdog(self.notifier), "systemd-watchdog")
        self._spawn(report_status(self.notifier, self._status_line), "systemd-status")

    def attach(self, *, telemetry: Telemetry, api_keys: ApiKeyStore, membership: GossipAgent | None,
               redis: RedisConnection | None, key_consumers: list[KeyConsumer]) -> None:
        """Wire in the node's parts: the operator endpoints read them, SIGHUP reloads into them."""
        self.view.api_keys, self.view.membership, self.view.redis = api_keys, membership, redis
        self.hooks.add("API keys", api_keys_hook(api_keys, self.config.api_keys_path))
        self.hooks.add("cluster keyring", keyring_hook(Path(self.config.cluster_key_path), key_consumers))
        self._spawn(self._stats_forever(telemetry, membership), "node-stats")

    def routes(self) -> list[web.RouteDef]:
        return operator_routes(self.view)

    async def reload(self) -> dict[str, str | None]:
        return await self.hooks.run()

    def ready(self) -> None:
        self.notifier.ready(self._status_line())

    def stopping(self) -> None:
        self.notifier.stopping(self._status_line())

    async def close(self) -> None:
        await self._tasks.close()
        self.notifier.close()

    def _spawn(self, coro, name: str) -> None:
        self._tasks.spawn(coro, name)

    async def _stats_forever(self, telemetry: Telemetry, membership: GossipAgent | None) -> None:
        published = None
        self._sampler.add(read_registry(telemetry.registry, time.monotonic()))
        while True:
            # Sleep first: the roles publish their own facts as they start, and gossip sends at most
            # one metadata change a second, so figures published now would delay the worker's models.
            await asyncio.sleep(STATS_EVERY_S)
            self._sampler.add(read_registry(telemetry.registry, time.monotonic()))
            summary = self._sampler.summary()
            if membership is not None and summary != published:
                try:
                    membership.publish(stats=summary)
                    published = summary
                except MetadataError as exc:  # metadata is capped at 1 KiB; the node's other facts matter more
                    if published is None:
                        log.warning("not publishing this node's figures in gossip: %s", exc)
                    published = summary
                    with contextlib.suppress(MetadataError):
                        membership.publish(stats={})  # publish merges: take the figures out again
                except Exception:  # gossip stopping under us (the drain leaves it first): not worth a crash
                    log.debug("publishing this node's figures failed", exc_info=True)
            live = [m.meta.get("stats") or {} for m in self.view.members() if str(m.state) in LIVE_STATES]
            self.view.history.record(time.time(), live)


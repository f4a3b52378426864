"""The gateway role: the OpenAI-compatible HTTP API."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from cynode.config import split_host_port
from cynode.errors import CynodeError, StartupError
from cynode.http_routes import cluster_routes, node_routes
from cynode.role import Role, RoleContext
from cynode.tasks import BackgroundTasks

from .app import build_app
from .guards import ClientGuards, GuardedSite
from .state import GatewayMetrics, GatewayState
from .tls import GatewayTls
from .upstream import Upstream

log = logging.getLogger(__name__)


class GatewayRole(Role):
    name = "gateway"

    def __init__(self, ctx: RoleContext) -> None:
        self._ctx = ctx
        self._config = ctx.config.gateway
        self._runner: web.AppRunner | None = None
        self._site: GuardedSite | None = None
        self._state: GatewayState | None = None
        self._tasks = BackgroundTasks("gateway")
        self._draining = False
        self._tls: GatewayTls | None = None

    async def start(self) -> None:
        keys = self._ctx.api_keys
        upstream = Upstream(self._ctx.channel, self._ctx.redis, self._config.coordinator)
        self._state = GatewayState(self._config, keys, upstream, GatewayMetrics.register(self._ctx.telemetry),
                                   default_priority=self._ctx.config.coordinator.task_queue.default_priority)
        routes = (node_routes(self._ctx.telemetry, self._ctx.readiness)
                  + cluster_routes(self._ctx.gossip, keys, self._ctx.redis) + self._ctx.http_routes)
        guards = ClientGuards(max_connections=self._config.max_connections_per_client,
                              rate=self._config.requests_per_second_per_client,
                              header_timeout=self._config.header_timeout, body_timeout=self._config.body_timeout)
        app = build_app(self._state, routes, guards)
        # handler_cancellation: a client that disconnects cancels its handler at once, so a request
        # still waiting for its first token (or for a worker) is given up, not left to run.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0,
                                     handler_cancellation=True)
        await self._runner.setup()
        host, port = split_host_port(self._config.listen)
        if self._config.tls_cert_file is not None:
            try:
                self._tls = GatewayTls(self._config.tls_cert_file, self._config.tls_key_file)
            except CynodeError as exc:
                raise StartupError(exc.message) from exc
        self._site = GuardedSite(self._runner, host, port, guards=guards, reuse_address=True,
                                 ssl_context=self._tls.context if self._tls else None)
        try:
            await self._site.start()
        except OSError as exc:
            raise StartupError(f"[gateway] listen {self._config.listen!r}: {exc.strerror or exc}") from exc
        self._tasks.spawn(upstream.leases.run(), "lease keeper")
        log.info("gateway listening on %s://%s", "https" if self._tls else "http", self._config.listen)

    async def reload(self) -> None:
        if self._tls is None:
            return
        try:
            log.info("gateway TLS reloaded: %s", self._tls.reload())
        except CynodeError as exc:
            log.error("gateway TLS not reloaded, keeping the previous certificate: %s", exc.message)

    async def drain(self, timeout: float) -> None:
        if self._site is None or self._state is None:
            return
        self._draining = True  # /readyz says so: load balancers stop sending work here
        await self._site.stop()  # no new connections; open streams carry on
        if self._runner is not None and self._runner.server is not None:
            self._runner.server.pre_shutdown()  # close idle keep-alive connections, no keep-alive from here on
        in_flight = self._state.in_flight
        if in_flight.count:
            log.info("draining %d in-flight request(s), up to %.0fs", in_flight.count, timeout)
        try:
            async with asyncio.timeout(timeout):
                await in_flight.idle.wait()
        except TimeoutError:
            log.warning("drain timeout: cutting off %d request(s)", in_flight.count)
        await self._state.upstream.reports.wait(timeout=5.0)  # completions the coordinator must hear of

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._tasks.close()
        if self._state is not None:
            await self._state.upstream.close()

    def readiness(self) -> tuple[bool, str]:
        if self._draining:
            return False, "draining"
        return (self._site is not None, "listening" if self._site else "not started")

"""The gateway role: the OpenAI-compatible HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web
from cynode.config import split_host_port
from cynode.errors import CynodeError, StartupError
from cynode.http_routes import cluster_routes, node_routes
from cynode.role import Role, RoleContext
from cynode.tasks import BackgroundTasks
from cynode.training_store import TrainingStore

from .app import build_app
from .auth import Identities
from .degraded import Degraded
from .guards import ClientGuards, GuardedSite
from .jwt_auth import JwtVerifier
from .keys_store import RuntimeKeys
from .limits import Limiter
from .responses_api import RESPONSES
from .responses_store import ResponseStore
from .state import GatewayMetrics, GatewayState
from .tls import GatewayTls
from .upstream import Upstream

log = logging.getLogger(__name__)

CUT_GRACE_S = 1.0  # for requests cut at the drain deadline to run their clean-up
REPORT_GRACE_S = 5.0  # for the completions and cancellations the coordinator must hear of


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
        limits = await self._limiter(keys)
        self._state = GatewayState(self._config, keys, upstream, GatewayMetrics.register(self._ctx.telemetry),
                                   default_priority=self._ctx.config.coordinator.task_queue.default_priority,
                                   limits=limits)
        if self._ctx.redis is not None:
            self._state.runtime_keys = RuntimeKeys(self._ctx.redis)
        self._state.identities = Identities(keys, self._state.runtime_keys, JwtVerifier.from_config(self._config))
        if self._ctx.redis is not None and self._ctx.gossip is not None and self._config.degraded_after > 0 \
                and not self._config.coordinator:
            self._state.degraded = Degraded(self._ctx.redis, self._ctx.gossip.members_raw,
                                            after=self._config.degraded_after)
        routes = (node_routes(self._ctx.telemetry, self._ctx.readiness)
                  + cluster_routes(self._ctx.gossip, keys, self._ctx.redis) + self._ctx.http_routes)
        guards = ClientGuards(max_connections=self._config.max_connections_per_client,
                              rate=self._config.requests_per_second_per_client,
                              header_timeout=self._config.header_timeout, body_timeout=self._config.body_timeout)
        app = build_app(self._state, routes, guards)
        if self._ctx.redis is not None:  # /v1/files and /v1/fine_tuning keep everything there
            app["training_store"] = TrainingStore(self._ctx.redis)
            app[RESPONSES] = ResponseStore(self._ctx.redis)  # and so do stored /v1/responses
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
        if self._state.degraded is not None:
            self._tasks.spawn(self._state.degraded.run(), "degraded-mode probe")
        log.info("gateway listening on %s://%s", "https" if self._tls else "http", self._config.listen)

    async def reload(self) -> None:
        if self._tls is None:
            return
        try:
            log.info("gateway TLS reloaded: %s", self._tls.reload())
        except CynodeError as exc:
            log.error("gateway TLS not reloaded, keeping the previous certificate: %s", exc.message)

    async def _limiter(self, keys) -> Limiter | None:
        """Per-key limits and usage need Redis, shared by every gateway; a limit that could not be
        enforced stops start-up instead of being ignored."""
        if self._ctx.redis is None:
            limited = [k.name for k in keys.keys if k.has_limits]
            if limited:
                raise StartupError(f"API key(s) {', '.join(limited)} set limits, which need Redis; this gateway has none")
            return None
        limiter = Limiter(self._ctx.redis, request_timeout=self._config.request_timeout)
        await limiter.check()
        return limiter

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
            # Cut them now, while the coordinator still serves: each one's Cancel must reach it.
            in_flight.cut()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CUT_GRACE_S):
                    await in_flight.idle.wait()
        await self._state.upstream.reports.wait(timeout=REPORT_GRACE_S)  # completions the coordinator must hear of
        if self._state.limits is not None:
            await self._state.limits.wait(timeout=1.0)  # usage and in-flight slots to settle (milliseconds)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._tasks.close()
        if self._state is not None:
            await self._state.upstream.close()
            if self._state.limits is not None:
                await self._state.limits.close()

    def readiness(self) -> tuple[bool, str]:
        if self._draining:
            return False, "draining"
        return (self._site is not None, "listening" if self._site else "not started")

"""A real gateway (the aiohttp app as the role builds it) on loopback HTTP, in front of the request
path of `request_path.py` (real coordinator and worker services on the sim engine, real Redis).

    gw = await GatewayHarness.start(redis_conn, keys)        # keys: an ApiKeyStore
    reply = await gw.client.post("/v1/chat/completions", json=..., headers=gw.auth(KEY))
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from aiohttp import web

from cynode.api_keys import ApiKeyStore
from cynode.config.sections import GatewaySection
from cynode.redis_conn import RedisConnection
from cynode.roles.gateway.app import build_app
from cynode.roles.gateway.auth import Identities
from cynode.roles.gateway.keys_store import RuntimeKeys
from cynode.roles.gateway.limits import Limiter
from cynode.roles.gateway.responses_api import RESPONSES
from cynode.roles.gateway.responses_store import ResponseStore
from cynode.roles.gateway.state import GatewayMetrics, GatewayState
from cynode.telemetry import Telemetry
from cynode.training_store import TrainingStore
from daemon_harness import free_port
from request_path import RequestPath


@dataclass
class GatewayHarness:
    path: RequestPath
    state: GatewayState
    runner: web.AppRunner
    url: str
    client: httpx.AsyncClient

    @classmethod
    async def start(cls, redis: RedisConnection, keys: ApiKeyStore, *, jwt=None, config: GatewaySection | None = None,
                    default_priority: int = 0, responses: ResponseStore | None = None) -> "GatewayHarness":
        """`responses`: where /v1/responses keeps what it stores (default: `redis`)."""
        path = await RequestPath.start(redis, workers=1, transport="local")
        path.clock.run_free()
        config = config or GatewaySection()
        limits = Limiter(redis, request_timeout=config.request_timeout)
        await limits.check()
        runtime = RuntimeKeys(redis)
        state = GatewayState(config, keys, path.upstream, GatewayMetrics.register(Telemetry("gw")),
                             default_priority=default_priority, limits=limits, runtime_keys=runtime,
                             identities=Identities(keys, runtime, jwt))
        app = build_app(state, [])
        app[RESPONSES] = responses or ResponseStore(redis)  # as the role does when it has Redis
        app["training_store"] = TrainingStore(redis)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        return cls(path, state, runner, url, httpx.AsyncClient(base_url=url, timeout=30))

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}

    async def chat(self, key: str, *, model: str = "sim", max_tokens: int = 3, stream: bool = False, **extra):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
                "stream": stream, **extra}
        return await self.client.post("/v1/chat/completions", json=body, headers=self.auth(key))

    async def stop(self) -> None:
        await self.client.aclose()
        await self.runner.cleanup()
        await self.state.limits.close()
        await self.path.stop()

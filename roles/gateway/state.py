"""What every gateway handler shares: config, keys, the cluster client, metrics, the in-flight count."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web
from cynode.api_keys import ApiKey, ApiKeyStore, require
from cynode.config.sections import GatewaySection
from cynode.errors import AuthError, RateLimitError, RequestError, UnavailableError
from cynode.fast_metrics import FastCounter, FastHistogram
from cynode.telemetry import Telemetry

from .auth import IDENTITY, Identities
from .degraded import Degraded
from .keys_store import RuntimeKeys
from .limits import Admission, Limiter
from .upstream import Upstream

LIMIT_HEADERS = web.RequestKey("cynode_ratelimit_headers", dict)  # x-ratelimit-* headers for the answer


@dataclass
class GatewayMetrics:
    requests: FastCounter
    latency: FastHistogram
    ttft: FastHistogram
    completions: FastCounter
    tokens: FastCounter

    @classmethod
    def register(cls, telemetry: Telemetry) -> GatewayMetrics:
        return cls(
            requests=telemetry.counter("gateway_http_requests", "HTTP requests by route and status", ("route", "status")),
            latency=telemetry.histogram("gateway_http_request_latency_seconds", "Seconds to answer, by route", ("route",)),
            ttft=telemetry.histogram("gateway_time_to_first_token_seconds", "Seconds from request to the first token"),
            completions=telemetry.counter("gateway_completions", "Completions by outcome (ok, cached, migrated, failed, "
                                          "cancelled)", ("outcome",)),
            tokens=telemetry.counter("gateway_completion_tokens", "Completion tokens sent to clients"),
        )


@dataclass
class InFlight:
    """The requests being served, so a drain can wait for them and cut the rest at its deadline."""

    count: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.idle.set()

    def enter(self) -> None:
        self.count += 1
        self.idle.clear()
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)

    def leave(self) -> None:
        self.count -= 1
        self.tasks.discard(asyncio.current_task())
        if self.count == 0:
            self.idle.set()

    def cut(self) -> int:
        """Cancel every request still being served (each one's clean-up reports it ended)."""
        for task in self.tasks:
            task.cancel()
        return len(self.tasks)


@dataclass
class GatewayState:
    config: GatewaySection
    keys: ApiKeyStore
    upstream: Upstream
    metrics: GatewayMetrics
    default_priority: int = 0
    limits: Limiter | None = None
    identities: Identities | None = None
    runtime_keys: RuntimeKeys | None = None
    degraded: Degraded | None = None
    in_flight: InFlight = field(default_factory=InFlight)

    def __post_init__(self) -> None:
        if self.identities is None:
            self.identities = Identities(self.keys)

    def authenticate(self, request: web.Request, scope: str) -> ApiKey:
        """The caller's key (resolved by the `identify` middleware) if it holds `scope`; else AuthError."""
        key = request.get(IDENTITY)
        if key is None:  # no Authorization header (or no middleware): the file keys decide
            key = self.keys.authenticate(request.headers.get("Authorization"))
        elif isinstance(key, AuthError):
            raise key
        require(key, scope)
        return key

    def authorize_model(self, key: ApiKey, model: str) -> None:
        require(key, "inference", model)

    def priority(self, key: ApiKey) -> int:
        """The queue priority of the key's requests."""
        return self.default_priority if key.priority is None else key.priority

    async def admit(self, request: web.Request, key: ApiKey, request_id: str, estimate: int) -> Admission | None:
        """Charge the key's limits (429 when one is reached); settle the admission when the request ends.
        The x-ratelimit-* headers go on the answer, refusals included."""
        if self.limits is None:
            if key.has_limits:  # a JWT's limit claims: never ignored
                raise UnavailableError(f"the limits of {key.name!r} cannot be enforced: this gateway has no Redis",
                                       retry_after=30, code="limits_unavailable")
            return None
        try:
            admission = await self.limits.admit(key, request_id, estimate)
        except RateLimitError as exc:
            request[LIMIT_HEADERS] = exc.headers
            raise
        if admission.headers:
            request[LIMIT_HEADERS] = admission.headers
        return admission

    async def read_body(self, request: web.Request) -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestError(
                f"request body is larger than {self.config.max_body_bytes} bytes ([gateway] max_body_bytes)",
                status=413, code="request_too_large",
            ) from None

    def record(self, outcome: str, completion_tokens: int) -> None:
        self.metrics.completions.labels(outcome).inc()
        if completion_tokens:
            self.metrics.tokens.inc(completion_tokens)

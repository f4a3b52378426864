"""One frozen, validated model per `node.toml` section (ARCHITECTURE section 11).

Every field has a default, so an empty file is a valid single-node config, and a one-line
docstring, which `cynode config explain` prints. Unknown keys are errors.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from cynode.engines.platform import BACKENDS
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .types import Address, ByteSize, Duration, LocalPath, split_host_port

ROLE_NAMES = ("gateway", "coordinator", "worker")
BACKEND_NAMES = ("auto", *BACKENDS)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class NodeSection(Section):
    id: str = Field(default_factory=socket.gethostname)
    """This node's name in the cluster; default: the host name."""
    roles: tuple[Literal["gateway", "coordinator", "worker"], ...] = ROLE_NAMES
    """Roles this node plays: any of gateway, coordinator, worker."""
    data_dir: LocalPath = Path("/var/lib/cynode")
    """Models, adapters, keys and embedded Redis data live here (relative paths: from the working directory)."""
    advertise: str = ""
    """Address peers use to reach this node; default: the bind address of each service."""
    log_format: Literal["text", "json"] = "text"
    """Log lines on stdout: human-readable text or one JSON object per line."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level of log lines printed."""
    drain_timeout: Duration = 30.0
    """On SIGTERM, how long in-flight requests may run before they are cut off."""

    @field_validator("id")
    @classmethod
    def _id_not_blank(cls, value: str) -> str:
        if not value.strip() or any(c.isspace() for c in value):
            raise ValueError(f"{value!r} is not a node id (expected a non-empty name without spaces)")
        return value

    @field_validator("roles")
    @classmethod
    def _roles_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"{list(value)} names a role twice")
        return value


class ClusterSection(Section):
    name: str = "default"
    """Cluster name; nodes of another cluster never merge with this one."""
    seeds: tuple[Address, ...] = ()
    """host:port gossip addresses of peers to join through."""
    key_file: LocalPath | None = None
    """Cluster key file (base64 32-byte keys, one per line); default <data_dir>/cluster.key, made on first start."""


class GossipSection(Section):
    bind: Address = "0.0.0.0:7946"
    """UDP and TCP address gossip listens on."""
    profile: Literal["lan", "wan", "local"] = "lan"
    """Timing preset: lan, wan or local."""


class RedisSection(Section):
    url: str = "redis://127.0.0.1:6379/0"
    """Redis holding the leader lock, task queue and prompt cache."""
    embedded: bool = False
    """true: the daemon starts and supervises its own redis-server on the url's loopback address."""
    username: str = ""
    """Redis ACL user to log in as (AUTH user password); default: the url's user, else `default`."""
    password_file: LocalPath | None = None
    """File whose first line is the Redis password (mode 0600; keeps it out of node.toml and the url)."""
    tls_ca_file: LocalPath | None = None
    """rediss:// only: PEM CA certificate(s) the server's certificate must chain to; default: the system's."""
    tls_cert_file: LocalPath | None = None
    """rediss:// only: PEM client certificate, for a Redis that requires one (tls-auth-clients yes)."""
    tls_key_file: LocalPath | None = None
    """rediss:// only: PEM private key of tls_cert_file."""
    sentinels: tuple[Address, ...] = ()
    """host:port of Redis Sentinels; when set, the master `master_name` is found (and followed across failovers) through them, and `url` gives only the scheme, database, user and password."""
    master_name: str = ""
    """With `sentinels`: the name the Sentinels monitor the master under (`sentinel monitor <name> ...`)."""
    wait_replicas: int = Field(default=1, ge=0, le=16)
    """With `sentinels`: replicas that must confirm (WAIT) the leader lock's epoch and every queue write before it counts; 0: don't wait (a failover may then lose the newest writes)."""
    wait_timeout: Duration = 0.5
    """With `sentinels` and `wait_replicas` > 0: how long a write waits for its replicas before it fails as unavailable."""

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{value!r} is not a Redis URL (expected redis://host:port/db)")
        return value

    @model_validator(mode="after")
    def _embedded_is_local(self) -> RedisSection:
        if self.embedded:
            host = urlsplit(self.url).hostname or ""
            if not self.url.startswith("redis://") or host not in ("127.0.0.1", "localhost", "::1"):
                raise ValueError(
                    f"embedded = true needs a loopback redis:// url (127.0.0.1, localhost or ::1), got {self.url!r}"
                )
            if self.username or self.password_file:
                raise ValueError("username and password_file are for an external Redis; the embedded one has no ACL")
        tls = [n for n in ("tls_ca_file", "tls_cert_file", "tls_key_file") if getattr(self, n) is not None]
        if tls and not self.url.startswith("rediss://"):
            raise ValueError(f"{', '.join(tls)} need a rediss:// url (TLS), got {self.url!r}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.sentinels and not self.master_name.strip():
            raise ValueError("sentinels needs master_name (the name the Sentinels monitor the master under)")
        if self.master_name and not self.sentinels:
            raise ValueError(f"master_name {self.master_name!r} needs sentinels (host:port of each Redis Sentinel)")
        if self.sentinels and self.embedded:
            raise ValueError("sentinels and embedded = true exclude each other (the embedded Redis has no replicas)")
        if self.sentinels and self.url.startswith("unix://"):
            raise ValueError("sentinels need a redis:// or rediss:// url (the master is reached over TCP)")
        return self


class GatewaySection(Section):
    listen: Address = "0.0.0.0:8080"
    """HTTP address of the OpenAI-compatible API."""
    api_keys_file: LocalPath | None = None
    """API-key file (TOML); default <data_dir>/api-keys.toml, written with one admin key on first start. Auth is always on."""
    coordinator: str = ""
    """host:port of a coordinator to use; default: the leader found through Redis."""
    max_retries: int = Field(default=2, ge=0, le=10)
    """Retries on another worker when one fails before the first token."""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest request body accepted."""
    request_timeout: Duration = 600.0
    """Longest a single completion may take end to end."""
    degraded_after: Duration = 5.0
    """With no coordinator leader (or no Redis) for this long, serve new requests straight from a worker found through gossip, uncached and unqueued ("0s": never)."""
    forward: bool = True
    """On a node without the gateway role: answer on `listen` by forwarding /v1/* to a gateway peer found through gossip."""
    jwt_secret_file: LocalPath | None = None
    """File holding the HS256 secret (32+ bytes) JWT bearer tokens may be signed with; default: no HS256."""
    jwt_public_key_file: LocalPath | None = None
    """PEM RSA public key that RS256 JWT bearer tokens may be signed with; default: none."""
    jwt_jwks_file: LocalPath | None = None
    """JWKS file (JSON) of RS256 keys, picked by the token's kid; re-read when it changes (key rotation)."""
    jwt_issuer: str = ""
    """The iss claim every JWT must carry; default: not checked."""
    jwt_audience: str = ""
    """The aud claim every JWT must carry; default: not checked."""
    jwt_leeway: Duration = 30.0
    """Clock skew allowed when checking a JWT's exp and nbf."""
    max_file_bytes: ByteSize = 64 * 1024 * 1024
    """Largest file POST /v1/files accepts (fine-tuning data, kept in Redis so every training worker reads it)."""
    tls_cert_file: LocalPath | None = None
    """PEM certificate (chain) to serve HTTPS with; re-read on SIGHUP. Default: plain HTTP."""
    tls_key_file: LocalPath | None = None
    """PEM private key of tls_cert_file."""
    max_connections_per_client: int = Field(default=256, ge=1)
    """Open connections one client address may hold; more are closed on arrival (before any auth)."""
    requests_per_second_per_client: float = Field(default=200.0, ge=0)
    """Requests per second one client address may send, in bursts of twice that; more get 429 (0: no limit)."""
    header_timeout: Duration = 15.0
    """A connection must send each request's headers within this of opening or of its last answer (slow clients)."""
    body_timeout: Duration = 60.0
    """A request's body must arrive within this once its headers have (slow clients get 408)."""

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewaySection:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self
    sse_keepalive: Annotated[Duration, Field(gt=0)] = 10.0
    """A stream whose first token takes longer than this starts anyway with SSE keep-alive comments, repeated at this interval, so proxies neither buffer nor time out (errors after that come as an error event)."""

    @field_validator("coordinator")
    @classmethod
    def _coordinator_address(cls, value: str) -> str:
        if value:
            split_host_port(value)
        return value


class TaskQueueSection(Section):
    max_size: int = Field(default=1000, ge=1)
    """Most queued requests before new ones get 429."""
    default_priority: int = 0
    """Priority of requests whose key sets none (higher runs first)."""
    max_retries: int = Field(default=3, ge=1)
    """Attempts a task gets before it moves to the dead-letter set."""
    lease_ttl: Duration = 30.0
    """How long an assignment lives without a heartbeat before its task is requeued."""


class PromptCacheSection(Section):
    enabled: bool = True
    """Cache responses of deterministic requests in Redis."""
    ttl: Duration = 1800.0
    """How long a cached response lives."""
    max_size: int = Field(default=10000, ge=1)
    """Most cached responses kept (least recently used go first)."""
    nondeterministic: bool = False
    """Also cache sampled requests without a seed (they would then always get the same answer)."""
    redis_url: str = ""
    """A separate Redis for the cache (it wants allkeys-lru, the queue noeviction); default: [redis] url. Reached with [redis]'s username, password_file and TLS files; must be rediss:// when [redis] url is. Not with [redis] sentinels (the cache then uses the Sentinel-managed master)."""

    @field_validator("redis_url")
    @classmethod
    def _cache_url_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{value!r} is not a Redis URL (expected redis://host:port/db or rediss://)")
        return value


class StaticWorker(Section):
    id: str
    """Worker name."""
    host: str
    """Host of the worker's gRPC service."""
    port: int = Field(default=50051, ge=1, le=65535)
    """Port of the worker's gRPC service."""
    weight: int = Field(default=100, ge=1)
    """Share of assignments relative to other workers."""
    tags: tuple[str, ...] = ("inference",)
    """What the worker offers (inference, training, cuda, ...)."""


class CoordinatorSection(Section):
    listen: Address = "0.0.0.0:50050"
    """gRPC address of the coordinator service."""
    health_check_interval: Duration = 10.0
    """How often each worker's health is checked (a worker whose models change is checked at once, through gossip)."""
    health_check_timeout: Duration = 5.0
    """How long a health check may take before it counts as failed."""
    max_retries: int = Field(default=3, ge=0)
    """Failed health checks in a row before a worker counts as unhealthy."""
    leader_ttl: Duration = Field(default=2.0, ge=0.3)
    """Lifetime of the leader lock, renewed at a quarter of it: a killed leader is replaced within about this long."""
    task_queue: TaskQueueSection = TaskQueueSection()
    """Priority queue settings."""
    prompt_cache: PromptCacheSection = PromptCacheSection()
    """Prompt cache settings."""
    workers: tuple[StaticWorker, ...] = ()
    """Static workers, besides those found through gossip."""

    @model_validator(mode="after")
    def _timeout_inside_interval(self) -> CoordinatorSection:
        if self.health_check_timeout > self.health_check_interval:
            raise ValueError("health_check_timeout must not exceed health_check_interval")
        return self


class SimSection(Section):
    ttft: Duration = 0.05
    """Time to the first token of each request."""
    tokens_per_second: float = Field(default=50.0, gt=0)
    """Pace of each stream after its first token."""
    answer_tokens: int = Field(default=64, ge=1)
    """Length of every answer (then end-of-text) unless max_tokens cuts it."""


class LoraSection(Section):
    vllm: bool = False
    """Start vLLM engines with LoRA, so they hot-load published fine-tuned adapters (vLLM reserves
    room for max_loras adapters of max_lora_rank; transformers engines always serve adapters)."""
    max_loras: int = Field(default=4, ge=1)
    """Different adapters one vLLM batch may hold at once (vLLM's max_loras); more wait."""
    max_lora_rank: Literal[8, 16, 32, 64, 128, 256] = 16
    """Highest adapter rank vLLM accepts (vLLM's max_lora_rank); a higher-rank adapter is refused, naming this."""


class WorkerSection(Section):
    listen: Address = "0.0.0.0:50051"
    """gRPC address of the worker service."""
    backend: Literal[BACKEND_NAMES] = "auto"  # type: ignore[valid-type]
    """Inference backend (cpu-transformers, cuda-vllm, ...); auto picks from what the host has."""
    model_registry: LocalPath | None = None
    """models.json listing the models this worker serves (reloaded on SIGHUP); default: the built-in model only."""
    models_dir: LocalPath | None = None
    """Where converted models are kept; default <data_dir>/models."""
    weight: int = Field(default=100, ge=1)
    """Share of assignments relative to other workers."""
    tags: tuple[str, ...] = ("inference", "training")
    """What this worker offers."""
    max_concurrency: int | None = Field(default=None, ge=1)
    """Optional ceiling on requests generated at once per model; more wait for a slot. Default: as many
    as the engine batches within memory (transformers: the KV cache that fits the memory budget at the
    model's full context; vLLM: its scheduler's own limit)."""
    memory_budget: ByteSize | None = None
    """Memory the loaded models may use ("24GiB"): their weights, then the rest as KV cache split between the loaded transformers models; default: 80% of what is available at start."""
    idle_unload: Duration = 0.0
    """Unload a model nobody used for this long ("0s": never)."""
    training_dir: LocalPath | None = None
    """Checkpoints and adapters of fine-tuning jobs; default <data_dir>/training; workers that resume each other's jobs and serve each other's adapters must share it."""
    training_threads: int | None = Field(default=None, ge=1)
    """CPU threads of a fine-tuning job's process (default: torch's choice, every core)."""
    lora: LoraSection = LoraSection()
    """Serving fine-tuned LoRA adapters next to their base models."""
    sim: SimSection = SimSection()
    """Pacing of the `sim` backend (benchmarks of cynode's own overhead; never a default)."""


class MetricsSection(Section):
    listen: Address = "0.0.0.0:9090"
    """HTTP address of /metrics, /healthz and /readyz on every node."""


def _safe(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}" if "@" in rest else url


class NodeConfig(Section):
    node: NodeSection = NodeSection()
    """This machine."""
    cluster: ClusterSection = ClusterSection()
    """The cluster it belongs to."""
    gossip: GossipSection = GossipSection()
    """Membership gossip."""
    redis: RedisSection = RedisSection()
    """Redis connection."""
    gateway: GatewaySection = GatewaySection()
    """The gateway role."""
    coordinator: CoordinatorSection = CoordinatorSection()
    """The coordinator role."""
    worker: WorkerSection = WorkerSection()
    """The worker role."""
    metrics: MetricsSection = MetricsSection()
    """Node-level HTTP for metrics and health."""

    @model_validator(mode="after")
    def _cache_redis_as_secure_as_redis(self) -> NodeConfig:
        cache_url = self.coordinator.prompt_cache.redis_url
        if cache_url and self.redis.sentinels:
            # A url names one server: the cache would sit outside the Sentinels' failover, and a url
            # cannot name a Sentinel-managed master. Without redis_url the cache uses [redis]'s master.
            raise ValueError(f"[coordinator.prompt_cache] redis_url {_safe(cache_url)!r} cannot be used with [redis] "
                             "sentinels (a url names one server, not a Sentinel-managed master); remove it: the cache "
                             "then lives on the master the Sentinels name")
        if cache_url.startswith("redis://") and self.redis.url.startswith("rediss://"):
            # The cache holds every cached prompt and answer: it must not be the one link in the clear.
            raise ValueError(f"[coordinator.prompt_cache] redis_url {_safe(cache_url)!r} is plaintext while [redis] url "
                             "uses TLS; use a rediss:// url for the cache (it gets [redis]'s TLS files, user and password)")
        return self

    @property
    def api_keys_path(self) -> Path:
        return self.gateway.api_keys_file or self.node.data_dir / "api-keys.toml"

    @property
    def cluster_key_path(self) -> Path:
        return self.cluster.key_file or self.node.data_dir / "cluster.key"

    @property
    def models_path(self) -> Path:
        return self.worker.models_dir or self.node.data_dir / "models"

    @property
    def training_path(self) -> Path:
        return self.worker.training_dir or self.node.data_dir / "training"

"""The daemon: the composition root that builds and runs a node's roles on one event loop.

Start order: cluster key → Redis (embedded or not) → node HTTP (/metrics, /healthz, /readyz) →
worker → coordinator → gateway, so each role finds what it depends on already serving. SIGTERM or
SIGINT drains in the reverse order (gateway first: it stops taking requests and lets open streams
finish), then stops everything. A role that fails to start stops the daemon with exit code 1.

Under systemd (`node/systemd.py`) the daemon reports STATUS= lines from start-up on, READY=1 once
every role serves, WATCHDOG=1 from the event loop and STOPPING=1 when the drain starts; SIGHUP
re-reads models (the roles), API keys and the cluster keyring (`node/reload_hooks.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import uuid
from collections.abc import Callable

from aiohttp import web

from .api_keys import ApiKeyStore, ensure_api_keys_file
from .cluster_key import ensure_key_file, load_keys
from .config import NodeConfig, split_host_port
from .embedded_redis import EmbeddedRedis
from .errors import CynodeError, StartupError
from .gossip_agent import GossipAgent
from .http_routes import cluster_routes, node_routes
from .operations import Operations
from .peer_auth import PeerAuth
from .redis_conn import RedisConnection
from .redis_tls import open_redis
from .role import Role, RoleContext
from .rpc.local import LocalServices
from .systemd import Notifier, status_line
from .tasks import BackgroundTasks
from .telemetry import Telemetry

log = logging.getLogger(__name__)

ROLE_ORDER = ("worker", "coordinator", "gateway")


def _role_class(name: str) -> Callable[[RoleContext], Role]:
    # Imported on demand so a gateway-only node never imports the worker's engines.
    if name == "worker":
        from cynode.roles.worker import WorkerRole
        return WorkerRole
    if name == "coordinator":
        from cynode.roles.coordinator import CoordinatorRole
        return CoordinatorRole
    from cynode.roles.gateway import GatewayRole
    return GatewayRole


@contextlib.contextmanager
def _data_dir_errors(cfg: NodeConfig):
    """The files start-up writes under data_dir (cluster key, API keys): a full or read-only disk is a
    StartupError naming the folder and the reason, not a traceback."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or cfg.node.data_dir
        hint = "free space there" if exc.errno == errno.ENOSPC else "fix its permissions"
        raise StartupError(f"[node] data_dir {cfg.node.data_dir}: cannot write {where}: {exc.strerror or exc} "
                           f"({hint}, or point data_dir at another disk)") from exc


class Daemon:
    def __init__(self, config: NodeConfig, *, notifier: Notifier | None = None) -> None:
        self.config = config
        self._phase = "starting"
        self._ops = Operations(config, notifier or Notifier(None), self._status_line)
        self._stop = asyncio.Event()
        self._roles: list[Role] = []
        self._planned: list[str] = []  # roles this node will run, in start order
        self._serving: set[str] = set()  # roles whose start() has returned
        self._embedded: EmbeddedRedis | None = None
        self._redis: RedisConnection | None = None
        self._http: web.AppRunner | None = None
        self._forwarder = None  # a node without the gateway role forwards /v1/* to a gateway peer
        self._gossip: GossipAgent | None = None
        self._local = LocalServices()
        self._tasks = BackgroundTasks("daemon")
        self._reloading: asyncio.Task | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        self._ops.supervise()
        try:
            await self._start()
        except CynodeError as exc:
            log.error("start-up failed: %s", exc.message)
            await self._shutdown(drain=False)
            return 1
        except Exception:
            log.exception("start-up failed")
            await self._shutdown(drain=False)
            return 1
        self._phase = "serving"
        self._ops.ready()
        log.info("node %s ready: %s", self.config.node.id, ", ".join(r.name for r in self._roles))
        await self._stop.wait()
        self._phase = f"draining (up to {self.config.node.drain_timeout:g}s for in-flight requests)"
        self._ops.stopping()
        await self._shutdown(drain=True)
        log.info("node %s stopped", self.config.node.id)
        return 0

    def _status_line(self) -> str:
        """systemd's STATUS=: the phase, then what each role says (loading model X, leader or standby)."""
        reports = {}
        for role in self._roles:
            ok, detail = role.readiness()
            reports[role.name] = (ok, detail if role.name in self._serving else f"starting ({detail})")
        return status_line(self._phase, reports)

    def _on_hangup(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = self._tasks.spawn(self._reload(), "sighup reload")

    async def _reload(self) -> None:
        log.info("SIGHUP received: reloading")
        await self._ops.reload()  # API keys and the cluster keyring
        for role in list(self._roles):
            if role.name in self._serving:
                try:
                    await role.reload()
                except Exception:
                    log.exception("reloading %s failed; it keeps its previous state", role.name)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            log.warning("%s again: already shutting down", sig.name)
            return
        log.info("%s received: draining", sig.name)
        self._stop.set()

    async def _start(self) -> None:
        cfg = self.config
        with _data_dir_errors(cfg):
            cfg.node.data_dir.mkdir(parents=True, exist_ok=True)
            if cfg.cluster.key_file is None and ensure_key_file(cfg.cluster_key_path):
                log.info("created cluster key %s; copy it to every node of the cluster", cfg.cluster_key_path)
            api_keys = self._api_keys()
        telemetry = Telemetry(cfg.node.id)
        roles = self._planned = [name for name in ROLE_ORDER if name in cfg.node.roles]
        keys = load_keys(cfg.cluster_key_path)
        if cfg.redis.embedded:
            self._embedded = EmbeddedRedis(cfg.redis.url, cfg.node.data_dir)
            await self._embedded.start()
        if {"coordinator", "gateway"} & set(roles):
            self._redis = open_redis(cfg.redis, cfg.cluster.name)
            await self._redis.connect()
            log.info("Redis: %s", self._redis.where)
        self._gossip = GossipAgent(cfg, keys, telemetry, roles)
        await self._gossip.start()
        hosts = {split_host_port(self._gossip.service_address(r))[0] for r in ("worker", "coordinator") if r in roles}
        # mTLS under the cluster CA; the certificate names this node's roles, which peers authorize by.
        peer_auth = PeerAuth(keys, cfg.node.id, addresses=tuple(sorted(hosts)), roles=tuple(roles))
        self._ops.attach(telemetry=telemetry, api_keys=api_keys, membership=self._gossip, redis=self._redis,
                         key_consumers=[self._gossip.node.keyring.replace, peer_auth.replace_keys])
        ctx = RoleContext(
            config=cfg,
            telemetry=telemetry,
            peer_auth=peer_auth,
            redis=self._redis,
            boot_id=uuid.uuid4().hex[:12],
            readiness=self._readiness,
            local_services=self._local_services(roles),
            api_keys=api_keys,
            gossip=self._gossip,
            local=self._local,
            http_routes=self._ops.routes(),
        )
        await self._start_node_http(telemetry, api_keys)
        for name in roles:
            log.info("starting %s", name)
            try:
                role = _role_class(name)(ctx)
                self._roles.append(role)
                await role.start()
                self._serving.add(name)
            except CynodeError as exc:
                raise StartupError(f"role {name} failed to start: {exc.message}") from exc
        if "gateway" not in roles and cfg.gateway.forward:
            from cynode.roles.gateway.forward import Forwarder, gateway_peers

            self._forwarder = Forwarder(cfg.node.id, cfg.gateway.listen,
                                        lambda: gateway_peers(self._gossip.members_raw(), cfg.node.id),
                                        max_body_bytes=cfg.gateway.max_body_bytes)
            await self._forwarder.start()

    def _api_keys(self) -> ApiKeyStore:
        """Every node checks API keys (its /v1/cluster/* endpoints need an admin key)."""
        path = self.config.api_keys_path
        if self.config.gateway.api_keys_file is None and ensure_api_keys_file(path):
            # The path only: the key itself is in the file, readable by its owner alone.
            log.warning("created API-key file %s with one admin key; read the key from there", path)
            print(f"cynode: wrote a new admin API key to {path}", flush=True)
        return ApiKeyStore.load(path)  # ConfigError names the file and the entry

    def _local_services(self, roles: list[str]) -> dict[str, str]:
        return {"worker": self._gossip.service_address("worker")} if "worker" in roles else {}

    async def _start_node_http(self, telemetry: Telemetry, api_keys: ApiKeyStore) -> None:
        app = web.Application()
        app.add_routes(node_routes(telemetry, self._readiness) + cluster_routes(self._gossip, api_keys, self._redis)
                       + self._ops.routes())
        self._http = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._http.setup()
        host, port = split_host_port(self.config.metrics.listen)
        try:
            await web.TCPSite(self._http, host, port, reuse_address=True).start()
        except OSError as exc:
            raise StartupError(f"[metrics] listen {self.config.metrics.listen!r}: {exc.strerror or exc}") from exc

    def _readiness(self) -> dict[str, tuple[bool, str]]:
        if self._phase.startswith("draining"):  # load balancers stop sending before the ports close
            return {name: (False, "draining") for name in self._planned}
        started = {role.name: role for role in self._roles if role.name in self._serving}
        return {name: started[name].readiness() if name in started else (False, "starting") for name in self._planned}

    async def _shutdown(self, *, drain: bool) -> None:
        if drain:
            # Hand over what a peer can take at once (leadership) before peers hear we leave.
            for role in reversed(self._roles):
                try:
                    await asyncio.wait_for(role.begin_drain(), timeout=2.0)
                except Exception:
                    log.exception("starting to drain %s failed", role.name)
        if self._gossip is not None:
            # Leave gossip first: peers stop sending this node new work while its streams finish.
            await self._gossip.stop(graceful=drain)
        if drain:
            # Gateway first: it stops taking requests while the roles behind it still serve its streams.
            # One deadline for all of them: [node] drain_timeout bounds the whole drain (TimeoutStopSec).
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.node.drain_timeout
            for role in reversed(self._roles):
                try:
                    await role.drain(max(0.0, deadline - loop.time()))
                except Exception:
                    log.exception("draining %s failed", role.name)
        for role in reversed(self._roles):
            try:
                await role.stop()
            except Exception:
                log.exception("stopping %s failed", role.name)
        await self._local.close()
        await self._tasks.close()
        if self._forwarder is not None:
            await self._forwarder.stop()
        if self._http is not None:
            await self._http.cleanup()
        if self._redis is not None:
            await self._redis.close()
        if self._embedded is not None:
            await self._embedded.stop()
        await self._ops.close()

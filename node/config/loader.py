"""Resolve the node configuration once: defaults < file < environment < flags.

The CLI calls `load_config` with `os.environ`; nothing else in cynode reads the environment.
Every problem is reported with where it came from and the key it concerns, e.g.
`node.toml: [gossip] seeds[1] "10.0.0.5" has no port (expected host:port)`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError
from .sections import NodeConfig
from .types import join_host_port, split_host_port

ENV_PREFIX = "CYNODE_"


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """Read `path` (None: defaults only), apply env overrides and dotted-key `overrides` from flags."""
    source = str(path) if path else "defaults"
    data = read_toml(path) if path else {}
    origins: dict[tuple[str, ...], str] = {}
    for key, value, origin in _env_overrides(env or {}, data):
        _set_dotted(data, key, value)
        origins[key] = origin
    for dotted, value in (overrides or {}).items():
        key = tuple(dotted.split("."))
        _set_dotted(data, key, value)
        origins[key] = f"flag for {dotted}"
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(err, origins) for err in exc.errors()]) from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except PermissionError:
        raise ConfigError(str(path), ["permission denied (cannot read the file)"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8; tomllib lets the decoder's error through
        raise ConfigError(str(path), [f"not valid TOML: not UTF-8 text (byte {exc.start})"]) from None


def _env_overrides(env: Mapping[str, str], data: Mapping[str, Any]):
    """Yield (key path, value, origin) for every override the environment holds."""
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and "__" in name:
            parts = tuple(p.lower() for p in name[len(ENV_PREFIX):].split("__"))
            if all(parts):
                yield parts, _parse_env_value(env[name]), f"environment {name}"
    # The seed's names keep working.
    if env.get("PREFERRED_BACKEND"):
        yield ("worker", "backend"), env["PREFERRED_BACKEND"], "environment PREFERRED_BACKEND"
    if env.get("MODEL_REGISTRY_PATH"):
        yield ("worker", "model_registry"), env["MODEL_REGISTRY_PATH"], "environment MODEL_REGISTRY_PATH"
    if env.get("GRPC_PORT"):
        listen = data.get("worker", {}).get("listen", "0.0.0.0:50051")
        host = _host_or(listen, "0.0.0.0")
        yield ("worker", "listen"), _address(host, env["GRPC_PORT"]), "environment GRPC_PORT"
    host, port = env.get("CY_LLM_COORDINATOR_HOST"), env.get("CY_LLM_COORDINATOR_PORT")
    if host or port:
        address = _address(host or "127.0.0.1", port or "50050")
        yield ("gateway", "coordinator"), address, "environment CY_LLM_COORDINATOR_HOST/PORT"


def _address(host: str, port: str) -> str:
    """host:port from separate parts; a non-numeric port is kept so validation names it."""
    return join_host_port(host, int(port)) if port.strip().isdigit() else f"{host}:{port}"


def _host_or(address: Any, default: str) -> str:
    try:
        return split_host_port(address)[0]
    except ValueError:
        return default


def _parse_env_value(text: str) -> Any:
    """A TOML literal when the text is one (true, 42, ["a", "b"]), else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(data: dict[str, Any], key: tuple[str, ...], value: Any) -> None:
    node = data
    for part in key[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[key[-1]] = value


def _describe(err: Any, origins: Mapping[tuple[str, ...], str]) -> str:
    loc = tuple(err["loc"])
    where = _render_loc(loc)
    origin = next((o for k, o in origins.items() if loc[: len(k)] == k), None)
    if err["type"] == "extra_forbidden":
        reason = "unknown key (`cynode config explain` lists every key)"
    else:
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("literal_error", "int_parsing", "bool_parsing", "int_type", "string_type",
                           "greater_than_equal", "less_than_equal", "tuple_type", "path_type"):
            reason = f"{err['input']!r}: {reason}"
    return (f"{where} " if where else "") + reason + (f" (from {origin})" if origin else "")


def _render_loc(loc: tuple[Any, ...]) -> str:
    if not loc:
        return ""  # a check across sections: its message names the fields
    section, rest = loc[0], loc[1:]
    key = ""
    for part in rest:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return f"[{section}] {key}".rstrip() if key else f"[{section}]"

"""`cynode status` and `cynode members`: the cluster as a node sees it, asked over its HTTP API."""

from __future__ import annotations

import json
import tomllib
import urllib.error
import urllib.request

from .config import NodeConfig, connect_host, split_host_port


def default_url(config: NodeConfig, service: str = "gateway") -> str:
    """This node's gateway (status needs the coordinator behind it) or its node-level HTTP (members)."""
    listen = config.gateway.listen if service == "gateway" else config.metrics.listen
    host, port = split_host_port(listen)
    return f"http://{connect_host(host)}:{port}"


def admin_key_from_file(config: NodeConfig) -> str | None:
    """The first admin key kept in clear in this node's API-key file, if we may read it."""
    try:
        keys = tomllib.loads(config.api_keys_path.read_text()).get("keys", [])
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return next((k["key"] for k in keys if "admin" in k.get("scopes", []) and "key" in k), None)


def fetch(url: str, path: str, key: str, timeout: float = 10.0, *, method: str = "GET", body: dict | None = None,
          command: str = "cynode") -> dict:
    """One admin call to a node's HTTP API; an error answer or no answer exits with what happened."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = err.reason
        raise SystemExit(f"{command}: {method} {url}{path} answered {err.code}: {message}") from None
    except (urllib.error.URLError, OSError) as err:
        raise SystemExit(f"{command}: cannot reach {url}: {getattr(err, 'reason', err)}") from None


def render_status(status: dict) -> str:
    leader = status.get("leader")
    lines = [
        f"leader   {leader['id']} at {leader['address']} (epoch {leader['epoch']})" if leader else "leader   none",
        f"queue    {status['queue']['pending']} pending, {status['queue']['inflight']} in flight, "
        f"{status['queue']['dead']} dead-lettered",
        f"cache    {status['cache']['entries']} entries, hit rate {status['cache']['hit_rate']:.1%}",
        "",
        f"{'WORKER':<20} {'ADDRESS':<22} {'STATE':<10} {'BREAKER':<10} {'LOAD':>9} {'WEIGHT':>7}  MODELS",
    ]
    for w in status["workers"]:
        load = f"{max(w['active'], w['leased'])}/{w['capacity']}"
        lines.append(f"{w['id']:<20} {w['address']:<22} {w['state']:<10} {w['breaker']:<10} {load:>9} {w['weight']:>7}  "
                     + ", ".join(w["models"]))
    return "\n".join(lines)


_KEY_META = ("models", "backend", "active", "capacity", "free_mem")


def render_members(body: dict) -> str:
    lines = [f"{'ID':<20} {'ADDRESS':<22} {'ROLES':<30} {'STATE':<8} {'INC':>4}  META"]
    for m in body["members"]:
        meta = m.get("meta", {})
        facts = [f"{k}={_short(meta[k])}" for k in _KEY_META if k in meta]
        lines.append(f"{m['id']:<20} {m['address']:<22} {','.join(m.get('roles', [])):<30} {m['state']:<8} "
                     f"{m['incarnation']:>4}  {' '.join(facts)}")
    return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, int) and value > 10**6:
        return f"{value / 2**30:.1f}GiB"
    return str(value)

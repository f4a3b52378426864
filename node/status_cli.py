"""`cynode status`: the cluster as the coordinator leader sees it, asked over a node's HTTP API."""

from __future__ import annotations

import json
import tomllib
import urllib.error
import urllib.request

from .config import NodeConfig, connect_host, split_host_port


def default_url(config: NodeConfig) -> str:
    host, port = split_host_port(config.gateway.listen)
    return f"http://{connect_host(host)}:{port}"


def admin_key_from_file(config: NodeConfig) -> str | None:
    """The first admin key kept in clear in this node's API-key file, if we may read it."""
    try:
        keys = tomllib.loads(config.api_keys_path.read_text()).get("keys", [])
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return next((k["key"] for k in keys if "admin" in k.get("scopes", []) and "key" in k), None)


def fetch_status(url: str, key: str, timeout: float = 10.0) -> dict:
    request = urllib.request.Request(url.rstrip("/") + "/v1/cluster/status", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = err.reason
        raise SystemExit(f"cynode status: {url} answered {err.code}: {message}") from None
    except (urllib.error.URLError, OSError) as err:
        raise SystemExit(f"cynode status: cannot reach {url}: {getattr(err, 'reason', err)}") from None


def render(status: dict) -> str:
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

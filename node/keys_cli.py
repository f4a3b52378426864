"""`cynode keys create/list/revoke/usage`: API keys made at run time, through a gateway's admin API.

    cynode keys create NAME [--scope S]... [--model GLOB]... [--rpm N] [--tpm N] [--concurrency N]
                            [--tokens-per-day N] [--tokens-per-month N] [--priority N] [--expires 30d]
    cynode keys list
    cynode keys revoke NAME
    cynode keys usage NAME [--days 7]

Each takes `-c node.toml`, `--url` (default: this node's gateway) and `--key` (an admin key;
default $CYNODE_API_KEY or this node's key file), like `cynode status`. `create` prints the new key
once, on stdout alone, so `KEY=$(cynode keys create ci)` works; nothing else ever shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    keys = commands.add_parser("keys", help="make, list and revoke API keys; read their usage")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("-c", "--config", type=Path, help="node.toml of this node (for its address and admin key)")
        parser.add_argument("--url", help="a gateway's HTTP address (default: this node's gateway)")
        parser.add_argument("--key", help="an API key with the admin scope (default: $CYNODE_API_KEY or this node's key file)")
        parser.add_argument("--json", action="store_true", help="print the raw JSON")
        return parser

    create = common(actions.add_parser("create", help="make a key (printed once)"))
    create.add_argument("name")
    create.add_argument("--scope", action="append", dest="scopes", choices=("inference", "training", "admin"),
                        help="a scope the key holds (repeat; default inference)")
    create.add_argument("--model", action="append", dest="models", help="a glob of model ids it may use (repeat; default *)")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--concurrency", type=int, help="requests in flight at once")
    create.add_argument("--tokens-per-day", type=int, help="token budget per UTC day")
    create.add_argument("--tokens-per-month", type=int, help="token budget per UTC month")
    create.add_argument("--priority", type=int, help="queue priority of its requests")
    create.add_argument("--expires", help="lifetime, e.g. 30d, 12h, 3600s (default: never)")
    common(actions.add_parser("list", help="every key and its state"))
    revoke = common(actions.add_parser("revoke", help="revoke a key made at run time"))
    revoke.add_argument("name")
    usage = common(actions.add_parser("usage", help="a key's requests and tokens per day"))
    usage.add_argument("name")
    usage.add_argument("--days", type=int, default=7)


def _lifetime(text: str) -> int:
    from .config.types import (
        parse_duration,  # on use: `cynode --help` imports no pydantic
    )

    text = text.strip()
    if text.endswith("d") and text[:-1].isdigit():
        return int(text[:-1]) * 86400
    return max(1, round(parse_duration(text)))


def _call(url: str, method: str, path: str, key: str, body: dict | None = None) -> dict:
    from .cluster_cli import fetch

    return fetch(url, path, key, 15.0, method=method, body=body, command="cynode keys")


def _render_list(body: dict) -> str:
    lines = [f"{'NAME':<24} {'SOURCE':<6} {'STATE':<8} {'SCOPES':<26} {'MODELS':<16} LIMITS"]
    for k in body["data"]:
        limits = [f"{short}={k[field]}" for field, short in (("requests_per_minute", "rpm"), ("tokens_per_minute", "tpm"),
                  ("max_concurrent_requests", "conc"), ("tokens_per_day", "day"), ("tokens_per_month", "month"))
                  if k.get(field)]
        lines.append(f"{k['name']:<24} {k['source']:<6} {k['state']:<8} {','.join(k['scopes']):<26} "
                     f"{','.join(k['models']):<16} {' '.join(limits) or '-'}")
    return "\n".join(lines)


def _render_usage(body: dict) -> str:
    lines = [f"{'DATE':<12} {'REQUESTS':>9} {'PROMPT':>10} {'COMPLETION':>11} {'TOTAL':>10}"]
    for d in body["data"]:
        lines.append(f"{d['date']:<12} {d['requests']:>9} {d['prompt_tokens']:>10} {d['completion_tokens']:>11} "
                     f"{d['total_tokens']:>10}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .cluster_cli import admin_key_from_file, default_url
    from .config import load_config

    config = load_config(args.config, os.environ)
    key = args.key or os.environ.get("CYNODE_API_KEY") or admin_key_from_file(config)
    if not key:
        print("cynode keys: no admin API key (pass --key, set CYNODE_API_KEY, or run where the key file is readable)",
              file=sys.stderr)
        return 2
    url = args.url or default_url(config, "gateway")
    if args.keys_command == "create":
        body: dict = {"name": args.name}
        for field, value in (("scopes", args.scopes), ("models", args.models), ("requests_per_minute", args.rpm),
                             ("tokens_per_minute", args.tpm), ("max_concurrent_requests", args.concurrency),
                             ("tokens_per_day", args.tokens_per_day), ("tokens_per_month", args.tokens_per_month),
                             ("priority", args.priority)):
            if value is not None:
                body[field] = value
        if args.expires:
            body["expires_in"] = _lifetime(args.expires)
        made = _call(url, "POST", "/v1/admin/keys", key, body)
        if args.json:
            print(json.dumps(made, indent=2))
        else:
            print(made["key"])
            print(f"cynode keys: made {made['name']!r}; the key above is shown only now", file=sys.stderr)
        return 0
    if args.keys_command == "list":
        body = _call(url, "GET", "/v1/admin/keys", key)
        print(json.dumps(body, indent=2) if args.json else _render_list(body))
        return 0
    name = urllib.parse.quote(args.name, safe="")
    if args.keys_command == "revoke":
        body = _call(url, "DELETE", f"/v1/admin/keys/{name}", key)
        print(json.dumps(body, indent=2) if args.json else f"revoked {body['name']}")
        return 0
    body = _call(url, "GET", f"/v1/admin/keys/{name}/usage?days={args.days}", key)
    print(json.dumps(body, indent=2) if args.json else _render_usage(body))
    return 0

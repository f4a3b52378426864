"""The `cynode` command line: the only place that parses argv or reads the environment.

    cynode run [-c node.toml]         run this node's roles until SIGTERM
    cynode config check FILE          validate a node.toml (exit 1 with every problem named)
    cynode config explain             every key, its default and meaning
    cynode status [-c node.toml]      leader, queue and workers of the cluster
    cynode members [-c node.toml]     the gossip members this node sees
    cynode doctor [-c node.toml]      check this host before the first start; say what to fix
    cynode keys ACTION                make, list, revoke API keys; read their usage (keys_cli.py)
    cynode keygen                     print a new cluster key
    cynode cluster-key list|add|promote|retire   rotate the cluster key, one step at a time
    cynode version                    version, commit and the engines this cynode carries

Nothing here imports torch: `cynode --help` and config commands stay instant.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from pathlib import Path

from .errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cynode", description="Run LLM serving and fine-tuning across a handful of machines.")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run this node's roles until SIGTERM")
    run.add_argument("-c", "--config", type=Path, help="node.toml (default: built-in defaults)")
    run.add_argument("--data-dir", type=Path, help="override [node] data_dir")
    run.add_argument("--roles", help="override [node] roles, comma-separated (e.g. gateway,worker)")

    config = commands.add_parser("config", help="check or explain node.toml")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_commands.add_parser("check", help="validate a node.toml with the current environment applied")
    check.add_argument("file", type=Path)
    config_commands.add_parser("explain", help="print every key with its default and meaning")

    status = commands.add_parser("status", help="leader, queue and workers of the cluster")
    status.add_argument("-c", "--config", type=Path, help="node.toml of this node (for its address and admin key)")
    status.add_argument("--url", help="a node's HTTP address (default: this node's gateway)")
    status.add_argument("--key", help="an API key with the admin scope (default: $CYNODE_API_KEY or this node's key file)")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    members = commands.add_parser("members", help="the gossip members this node sees")
    members.add_argument("-c", "--config", type=Path, help="node.toml of this node (for its address and admin key)")
    members.add_argument("--url", help="a node's HTTP address (default: this node's [metrics] listen)")
    members.add_argument("--key", help="an API key with the admin scope (default: $CYNODE_API_KEY or this node's key file)")
    members.add_argument("--json", action="store_true", help="print the raw JSON")

    train = commands.add_parser("train", help="upload a dataset, start a fine-tuning job and follow its progress")
    train.add_argument("file", type=Path, help="training data (JSONL)")
    train.add_argument("--model", required=True, help="base model id (as /v1/models lists it)")
    train.add_argument("--validation-file", type=Path, help="validation data (JSONL)")
    train.add_argument("--method", choices=("supervised", "dpo"), default="supervised")
    train.add_argument("--suffix", help="part of the fine-tuned model's name: <model>:ft-<suffix>-<job>")
    train.add_argument("--seed", type=int)
    train.add_argument("--epochs", dest="n_epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--learning-rate-multiplier", type=float, help="times the base learning rate 2e-4")
    train.add_argument("--max-steps", type=int)
    train.add_argument("--max-seq-len", type=int)
    train.add_argument("--beta", type=float, help="DPO only")
    train.add_argument("--detach", action="store_true", help="print the job id and return at once")
    train.add_argument("-c", "--config", type=Path, help="node.toml of this node (for its address and key)")
    train.add_argument("--url", help="a gateway's HTTP address (default: this node's gateway)")
    train.add_argument("--key", help="an API key with the training scope (default: $CYNODE_API_KEY or this node's "
                                     "admin key)")

    doctor = commands.add_parser("doctor", help="check this host before the first start and say what to fix")
    doctor.add_argument("-c", "--config", type=Path, help="node.toml to check (default: built-in defaults)")

    from .keys_cli import add_parser as add_keys_parser

    add_keys_parser(commands)
    commands.add_parser("keygen", help="print a new base64 cluster key for [cluster] key_file")
    cluster_key = commands.add_parser("cluster-key", help="rotate the cluster key step by step (docs/security.md)")
    cluster_key.add_argument("action", choices=("list", "add", "promote", "retire"),
                             help="list key ids; add a key read from stdin; promote an id to sign; retire an id")
    cluster_key.add_argument("id", nargs="?", help="key id (from `list`) for promote and retire")
    cluster_key.add_argument("-c", "--config", type=Path, help="node.toml (for [cluster] key_file)")
    cluster_key.add_argument("--key-file", type=Path, help="the cluster key file (default: from the config)")
    commands.add_parser("version", help="print the version, commit and engines")
    return parser


class _VersionAction(argparse.Action):
    """`--version`, computed only when asked (it looks for the engines, without importing them)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0,
                         help=help or "print the version, commit and engines, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from .build_info import version_text

        print(version_text())
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    multiprocessing.freeze_support()  # the PyInstaller binary re-enters here in spawned children
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "config":
            return _config(args)
        if args.command in ("status", "members"):
            return _cluster_view(args)
        if args.command == "doctor":
            return _doctor(args)
        if args.command == "keys":
            from .keys_cli import run as run_keys

            return run_keys(args)
        if args.command == "train":
            return _train(args)
        if args.command == "cluster-key":
            return _cluster_key(args)
        if args.command == "keygen":
            from .cluster_key import generate_key

            print(generate_key())
            return 0
        from .build_info import version_text

        print(version_text())
        return 0
    except ConfigError as exc:
        print(f"cynode: invalid configuration\n{exc}", file=sys.stderr)
        return 2


def _flag_overrides(args: argparse.Namespace) -> dict[str, object]:
    overrides: dict[str, object] = {}
    if getattr(args, "data_dir", None):
        overrides["node.data_dir"] = str(args.data_dir)
    if getattr(args, "roles", None):
        overrides["node.roles"] = [r.strip() for r in args.roles.split(",") if r.strip()]
    return overrides


def _config(args: argparse.Namespace) -> int:
    from .config import explain, load_config

    if args.config_command == "explain":
        print(explain(), end="")
        return 0
    config = load_config(args.file, os.environ)
    print(f"{args.file}: ok (roles: {', '.join(config.node.roles)}; node id {config.node.id})")
    return 0


def _cluster_view(args: argparse.Namespace) -> int:
    import json

    from .cluster_cli import (
        admin_key_from_file,
        default_url,
        fetch,
        render_members,
        render_status,
    )
    from .config import load_config

    config = load_config(args.config, os.environ)
    key = args.key or os.environ.get("CYNODE_API_KEY") or admin_key_from_file(config)
    if not key:
        print(f"cynode {args.command}: no admin API key (pass --key, set CYNODE_API_KEY, "
              "or run where the key file is readable)", file=sys.stderr)
        return 2
    if args.command == "status":
        body = fetch(args.url or default_url(config, "gateway"), "/v1/cluster/status", key)
        print(json.dumps(body, indent=2) if args.json else render_status(body))
    else:
        body = fetch(args.url or default_url(config, "metrics"), "/v1/cluster/members", key)
        print(json.dumps(body, indent=2) if args.json else render_members(body))
    return 0


def _train(args: argparse.Namespace) -> int:
    from .cluster_cli import admin_key_from_file, default_url
    from .config import load_config
    from .train_cli import run

    config = load_config(args.config, os.environ)
    key = args.key or os.environ.get("CYNODE_API_KEY") or admin_key_from_file(config)
    if not key:
        print("cynode train: no API key (pass --key, set CYNODE_API_KEY, or run where the node's key file is "
              "readable)", file=sys.stderr)
        return 2
    return run(args, args.url or default_url(config, "gateway"), key)
def _cluster_key(args: argparse.Namespace) -> int:
    from . import cluster_key_cli
    from .config import load_config

    if args.action in ("promote", "retire") and not args.id:
        print(f"cynode cluster-key {args.action}: name the key id (see `cynode cluster-key list`)", file=sys.stderr)
        return 2
    path = args.key_file or load_config(args.config, os.environ).cluster_key_path
    return cluster_key_cli.run(args.action, path, args.id)


def _doctor(args: argparse.Namespace) -> int:
    from .config import load_config
    from .doctor import FAIL, render, run_checks

    config = load_config(args.config, os.environ)  # a bad file stops here, every problem named (exit 2)
    checks = run_checks(config)
    source = args.config or "built-in defaults"
    print(render(checks, f"cynode doctor: {source} (node {config.node.id}; roles: {', '.join(config.node.roles)})"))
    return 1 if any(c.level == FAIL for c in checks) else 0


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from .config import load_config
    from .daemon import Daemon
    from .logs import setup_logging, under_journald
    from .systemd import Notifier

    config = load_config(args.config, os.environ, _flag_overrides(args))
    setup_logging(config.node.log_format, config.node.log_level, config.node.id, journal=under_journald(os.environ))
    multiprocessing.set_start_method("spawn", force=True)  # fork + threads + torch do not mix
    daemon = Daemon(config, notifier=Notifier.from_environ(os.environ))  # takes NOTIFY_SOCKET & co. out of the env
    try:
        import uvloop

        return uvloop.run(daemon.run())
    except ImportError:
        return asyncio.run(daemon.run())


if __name__ == "__main__":
    sys.exit(main())

"""`cynode cluster-key`: the steps of rotating the cluster key on one node, done on its key file.

A rotation, with every node serving throughout (docs/security.md):
    cynode keygen > new.key                       # once; copy new.key to every node
    cynode cluster-key add < new.key              # every node, then `systemctl reload cynode`
    cynode cluster-key promote ID                 # every node, then reload: the new key signs
    cynode cluster-key retire ID                  # every node (the old key's ID), then reload
Keys are named by `key_id`, never printed. Each step rewrites the file atomically (mode 0600) and
takes effect at the next SIGHUP; no step does anything a node with the previous file cannot talk to.
"""

from __future__ import annotations

import base64
import binascii
import sys
from pathlib import Path

from .cluster_key import KEY_BYTES, key_id, load_keys, write_keys
from .errors import ConfigError

RELOAD_HINT = "then reload the node (`systemctl reload cynode` or SIGHUP) before the next step on any node"


def run(action: str, path: Path, ident: str | None, stdin=sys.stdin) -> int:
    keys = load_keys(path)  # ConfigError names the file and the line
    if action == "list":
        for index, key in enumerate(keys):
            print(f"{key_id(key)}  {'signs and encrypts' if index == 0 else 'accepted'}")
        return 0
    if action == "add":
        new = _read_key(stdin.read())
        if new in keys:
            print(f"cynode cluster-key: {key_id(new)} is already in {path}", file=sys.stderr)
            return 0
        write_keys(path, (keys[0], new, *keys[1:]))
        print(f"added {key_id(new)} as an accepted key of {path}; {RELOAD_HINT}")
        return 0
    chosen = [k for k in keys if key_id(k) == ident]
    if not chosen:
        print(f"cynode cluster-key: no key {ident} in {path} (see `cynode cluster-key list`)", file=sys.stderr)
        return 1
    if action == "promote":
        write_keys(path, (chosen[0], *(k for k in keys if k != chosen[0])))
        print(f"{ident} now signs and encrypts; {RELOAD_HINT}")
        return 0
    if chosen[0] == keys[0]:  # retire
        print(f"cynode cluster-key: {ident} signs for this node; promote another key first", file=sys.stderr)
        return 1
    write_keys(path, tuple(k for k in keys if k != chosen[0]))
    print(f"retired {ident} from {path}; {RELOAD_HINT}")
    return 0


def _read_key(text: str) -> bytes:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if len(lines) != 1:
        raise ConfigError("stdin", [f"expected one base64 key (from `cynode keygen`), got {len(lines)} line(s)"])
    try:
        key = base64.b64decode(lines[0], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("stdin", ["not base64"]) from None
    if len(key) != KEY_BYTES:
        raise ConfigError("stdin", [f"key is {len(key)} bytes, expected {KEY_BYTES}"])
    return key

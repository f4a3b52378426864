"""The cluster key file: base64-encoded 32-byte keys, one per line (ARCHITECTURE section 11).

The first key is used to sign and encrypt what this node sends; all of them are accepted on what it
receives, so keys can be rotated without downtime: add the new key second everywhere, move it first
everywhere, then drop the old one. Blank lines and lines starting with `#` are ignored.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
from pathlib import Path

from .errors import ConfigError

KEY_BYTES = 32


def generate_key() -> str:
    """A new key in the file's encoding (what `cynode keygen` prints)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def load_keys(path: Path) -> tuple[bytes, ...]:
    """Read the keyring; every bad line is named."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), ["cluster key file not found (create one with `cynode keygen > FILE`)"]) from None
    except PermissionError:
        raise ConfigError(str(path), ["permission denied (the daemon cannot read the cluster key file)"]) from None
    if path.stat().st_mode & 0o077:
        raise ConfigError(str(path), [f"readable by other users; run `chmod 600 {path}`"])
    keys: list[bytes] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"line {number}: not base64")
            continue
        if len(key) != KEY_BYTES:
            problems.append(f"line {number}: key is {len(key)} bytes, expected {KEY_BYTES}")
            continue
        keys.append(key)
    if not keys and not problems:
        problems.append("holds no key (add one with `cynode keygen >> FILE`)")
    if problems:
        raise ConfigError(str(path), problems)
    return tuple(keys)


def ensure_key_file(path: Path) -> bool:
    """Create `path` with one new key (mode 0600) if it does not exist; True when created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write("# cynode cluster key: copy this file to every node of the cluster.\n")
        handle.write(generate_key() + "\n")
    return True


def key_id(key: bytes) -> str:
    """A short public name for a key (a hash under its own label; reveals nothing of the key)."""
    return hashlib.sha256(b"cynode cluster key id v1\0" + key).hexdigest()[:12]


def write_keys(path: Path, keys: tuple[bytes, ...]) -> None:
    """Replace the key file with `keys` (first signs), atomically and readable by its owner only."""
    if not keys:
        raise ValueError("a cluster key file needs at least one key")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("# cynode cluster key: the first key signs and encrypts; every key is accepted.\n")
            handle.writelines(base64.b64encode(k).decode() + "\n" for k in keys)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise

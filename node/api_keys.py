"""The gateway's API keys: the TOML key file, authentication and per-key permissions.

The file (ARCHITECTURE section 11) holds each key either in clear text or as its SHA-256 digest.
In memory only digests are kept, so a heap dump or a stray repr never shows a key, and a
presented key is hashed and compared against every digest with `hmac.compare_digest`, so the
time taken does not tell an attacker which key, or how much of one, matched.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import re
import secrets
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from cynode.errors import AuthError, ConfigError

__all__ = ["LIMIT_FIELDS", "SCOPES", "ApiKey", "ApiKeyStore", "bearer_token", "check_expiry", "ensure_api_keys_file",
           "generate_key", "key_digest", "require", "unknown_key"]

SCOPES = ("inference", "training", "admin")
KEY_PREFIX = "sk-cynode-"
LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "max_concurrent_requests", "tokens_per_day",
                "tokens_per_month")
_FIELDS = ("name", "key", "sha256", "scopes", "models", *LIMIT_FIELDS, "priority", "expires")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_MISSING_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")

_HEADER = """\
# cynode API keys. Every HTTP request needs one: Authorization: Bearer <key>.
# Edit this file, then restart cynode. Each [[keys]] entry is one client:
#   name                 unique label, shown in logs and errors
#   key = "sk-..."       the key in clear text; only in a file nobody else can read (chmod 600)
#   sha256 = "<hex>"     instead of key: its SHA-256, e.g. printf %s "$KEY" | sha256sum
#   scopes               any of "inference", "training", "admin" (default ["inference"])
#   models               glob patterns of the model ids the key may use (default ["*"])
#   requests_per_minute  optional limit, held by all gateways together (through Redis)
#   tokens_per_minute    optional limit (prompt + completion tokens)
#   max_concurrent_requests  optional limit on requests in flight at once
#   tokens_per_day       optional budget, per UTC day
#   tokens_per_month     optional budget, per UTC calendar month
#   expires              optional TOML date-time (2027-01-31T00:00:00Z) after which the key is refused
#   priority             queue priority of this key's requests (default: [coordinator.task_queue] default_priority)
"""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What a key may do. Holds no secret, so it is safe to log and to pass around."""

    name: str
    scopes: frozenset[str] = frozenset({"inference"})
    models: tuple[str, ...] = ("*",)
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    priority: int | None = None
    """None: the queue's default priority."""
    expires_at: float | None = None
    """Unix time after which the key is refused; None: never."""
    source: str = "file"
    """Where the key comes from: file, redis (made at run time) or jwt."""

    @property
    def has_limits(self) -> bool:
        return any(getattr(self, f) is not None for f in LIMIT_FIELDS)

    def allows_model(self, model: str) -> bool:
        if self.models == ("*",):  # the common case, on every request: no pattern matching
            return True
        # fnmatchcase: model ids are case-sensitive on every platform.
        return any(fnmatchcase(model, pattern) for pattern in self.models)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


class ApiKeyStore:
    """The loaded keys, as (SHA-256 digest, ApiKey) pairs."""

    def __init__(self, entries: Iterable[tuple[bytes, ApiKey]]) -> None:
        self._entries = tuple(entries)

    @classmethod
    def from_keys(cls, keys: Iterable[tuple[str, ApiKey]]) -> ApiKeyStore:
        """A store from (clear key, ApiKey) pairs, for embedding and tests."""
        return cls((hashlib.sha256(key.encode()).digest(), api_key) for key, api_key in keys)

    @classmethod
    def load(cls, path: Path) -> ApiKeyStore:
        """Read and validate the key file; raises ConfigError listing every bad entry."""
        source = str(path)
        try:
            with open(path, "rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                raw = handle.read()
        except FileNotFoundError:
            raise ConfigError(source, ["file not found"]) from None
        except PermissionError:
            raise ConfigError(source, ["permission denied (cannot read the file)"]) from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(source, [f"not valid TOML: {exc}"]) from None

        problems = [f"unknown top-level key {name!r} (expected only [[keys]] tables)" for name in data if name != "keys"]
        tables = data.get("keys", [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ConfigError(source, problems + ["keys must be [[keys]] tables"])
        if not tables:
            problems.append("no [[keys]] entries, so every request would be refused; add one")
        entries, seen = [], {}
        for i, table in enumerate(tables):
            entry = _parse_entry(table, f"keys[{i}]", problems)
            if entry is None:
                continue
            digest, api_key = entry
            if api_key.name in seen:
                problems.append(f"keys[{i}].name {api_key.name!r} is already used by keys[{seen[api_key.name]}]")
            seen.setdefault(api_key.name, i)
            entries.append(entry)
        has_clear = any("key" in t for t in tables)
        if has_clear and os.name == "posix" and mode & 0o077:
            problems.append(f"holds clear-text keys but other users can read it (mode {mode & 0o777:04o}); "
                            f"run: chmod 600 {path}")
        if problems:
            raise ConfigError(source, problems)
        return cls(entries)

    def replace(self, other: ApiKeyStore) -> None:
        """Take `other`'s keys in place (SIGHUP re-reads the file): everything holding this store
        authenticates against the new keys from the next request on."""
        self._entries = other._entries

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        return tuple(api_key for _, api_key in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, token: str) -> ApiKey | None:
        """The key whose digest matches `token`, or None; the same work whichever matches."""
        presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = None
        for digest, api_key in self._entries:  # no early exit: every request costs the same
            if hmac.compare_digest(presented, digest) and found is None:
                found = api_key
        return found

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key named by an `Authorization: Bearer <key>` header; raises AuthError (401)."""
        token = bearer_token(authorization)
        found = self.find(token)
        if found is None:
            raise unknown_key(token)
        check_expiry(found)
        return found


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; AuthError (401) for none or another scheme."""
    scheme, token = ((authorization or "").split(None, 1) + ["", ""])[:2]
    token = token.strip()
    if not scheme or (scheme.lower() == "bearer" and not token):
        raise AuthError(_MISSING_KEY, status=401, code="missing_api_key")
    if scheme.lower() != "bearer":
        raise AuthError(f"The Authorization header must use Bearer auth (Authorization: Bearer YOUR_KEY); "
                        f"got the {scheme[:20]!r} scheme.", status=401, code="invalid_authorization_header")
    return token


def unknown_key(token: str) -> AuthError:
    return AuthError(f"Incorrect API key provided: {_mask(token)}. Check the key, or ask the cluster "
                     "operator for one.", status=401, code="invalid_api_key")


def check_expiry(key: ApiKey, now: float | None = None) -> None:
    """Refuse (401) a key past its expiry."""
    if key.expires_at is not None and (time.time() if now is None else now) >= key.expires_at:
        raise AuthError(f"The API key {key.name!r} has expired; ask the cluster operator for a new one.",
                        status=401, code="expired_api_key")


def require(key: ApiKey, scope: str, model: str | None = None) -> None:
    """Refuse (403) a request the key is not allowed to make."""
    if not key.has_scope(scope):
        held = ", ".join(sorted(key.scopes)) or "none"
        raise AuthError(f"The API key {key.name!r} lacks the {scope!r} scope (it has: {held}).",
                        status=403, code="insufficient_scope")
    if model is not None and not key.allows_model(model):
        raise AuthError(f"The API key {key.name!r} is not allowed to use the model {model!r}.",
                        status=403, code="model_not_allowed")


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """The hex SHA-256 of a key, as written in the file's `sha256` field."""
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_api_keys_file(path: Path) -> str | None:
    """Write a key file with one admin key when there is none; returns that key, else None.

    The caller should print the path, never the key: logs outlive terminals.
    """
    if path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    text = (f'{_HEADER}\n[[keys]]\nname = "admin"\nkey = "{key}"\n'
            f'scopes = ["inference", "training", "admin"]\nmodels = ["*"]\n')
    # Created 0600 from the first byte (a chmod afterwards leaves a window where others can read
    # it), written under a temporary name and linked into place, so a crash never leaves half a
    # file and a concurrent first start never overwrites a key already handed out.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        except OSError:  # a filesystem without hard links: rename, accepting the tiny race
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return key


def _mask(token: str) -> str:
    """Enough of a presented key to recognise it (as OpenAI does), never all of it."""
    if len(token) >= 12:
        return f"{token[:7]}...{token[-4:]}"
    return f"{token[:2]}..." if len(token) > 4 else "..."


def _parse_entry(table: dict[str, Any], where: str, problems: list[str]) -> tuple[bytes, ApiKey] | None:
    """Validate one [[keys]] table, appending a line per problem; None when it is unusable."""
    before = len(problems)
    for field in table:
        if field not in _FIELDS:
            problems.append(f"{where}.{field}: unknown field (expected {', '.join(_FIELDS)})")
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{where}.name: required, a non-empty string")
    digest = _digest(table, where, problems)
    scopes = _strings(table, "scopes", ["inference"], where, problems)
    for scope in scopes:
        if scope not in SCOPES:
            problems.append(f"{where}.scopes: unknown scope {scope!r} (expected any of {', '.join(SCOPES)})")
    if "scopes" in table and not scopes:
        problems.append(f"{where}.scopes: empty, so the key could do nothing (expected any of {', '.join(SCOPES)})")
    models = _strings(table, "models", ["*"], where, problems)
    limits = {f: _integer(table, f, where, problems, low=1) for f in LIMIT_FIELDS}
    priority = _integer(table, "priority", where, problems)
    expires = table.get("expires")
    if expires is not None and not (isinstance(expires, datetime.datetime) and expires.tzinfo is not None):
        problems.append(f"{where}.expires: must be a TOML date-time with a time zone, e.g. 2027-01-31T00:00:00Z; "
                        f"got {expires!r}")
    if len(problems) > before:
        return None
    api_key = ApiKey(name=name, scopes=frozenset(scopes), models=tuple(models), priority=priority,
                     expires_at=expires.timestamp() if expires is not None else None, **limits)
    return digest, api_key


def _digest(table: dict[str, Any], where: str, problems: list[str]) -> bytes:
    if "key" in table and "sha256" in table:
        problems.append(f"{where}: has both key and sha256; keep only one")
    elif "key" in table:
        key = table["key"]
        if isinstance(key, str) and key:
            return hashlib.sha256(key.encode()).digest()
        problems.append(f"{where}.key: must be a non-empty string")
    elif "sha256" in table:
        text = table["sha256"]
        if isinstance(text, str) and _HEX64.fullmatch(text):
            return bytes.fromhex(text)
        problems.append(f"{where}.sha256: not a SHA-256 hex digest (expected 64 hex digits, "
                        f"e.g. from: printf %s \"$KEY\" | sha256sum)")
    else:
        problems.append(f"{where}: needs either key (clear text) or sha256 (hex digest of the key)")
    return b""


def _strings(table: dict[str, Any], field: str, default: list[str], where: str, problems: list[str]) -> list[str]:
    value = table.get(field, default)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.append(f"{where}.{field}: must be a list of non-empty strings; got {value!r}")
        return []
    return value


def _integer(table: dict[str, Any], field: str, where: str, problems: list[str], low: int | None = None) -> int | None:
    value = table.get(field)
    if value is None:
        return None
    # TOML booleans are Python ints too; `priority = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{where}.{field}: must be an integer; got {value!r}")
    elif low is not None and value < low:
        problems.append(f"{where}.{field}: must be at least {low}; got {value}")
    else:
        return value
    return None

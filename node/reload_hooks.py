"""What SIGHUP re-reads besides the roles' own files: the API keys and the cluster keyring.

Each reload is all or nothing: the file is read and validated first, and only a good file replaces
what is in use; a bad one is logged, naming the file and the problem, and the node keeps the keys it
had. Reloading never drops a connection or an open stream.

The keyring reaches every part that holds cluster keys through `KeyConsumer` callables (the gossip
keyring and the gRPC mTLS material of `cynode.peer_auth`), so
rotating keys is three edits of the key file and three `systemctl reload`s, no restart:
add the new key second everywhere, move it first everywhere, drop the old one.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from .api_keys import ApiKeyStore
from .cluster_key import load_keys
from .errors import ConfigError

log = logging.getLogger(__name__)

KeyConsumer = Callable[[tuple[bytes, ...]], None]
"""Takes a validated keyring (first key signs/encrypts, all verify/decrypt); must not raise on good keys."""

Hook = Callable[[], "Awaitable[str] | str"]


class ReloadHooks:
    """Named reload steps the daemon runs on SIGHUP, each isolated from the others' failures."""

    def __init__(self) -> None:
        self._hooks: list[tuple[str, Hook]] = []

    def add(self, what: str, hook: Hook) -> None:
        """`hook` re-reads something and returns a one-line summary; it raises to keep the old state."""
        self._hooks.append((what, hook))

    async def run(self) -> dict[str, str | None]:
        """Run every hook; {what: None on success, else the reason it was not reloaded}."""
        outcome: dict[str, str | None] = {}
        for what, hook in self._hooks:
            try:
                summary = hook()
                if inspect.isawaitable(summary):
                    summary = await summary
            except ConfigError as exc:
                log.error("%s not reloaded, keeping the previous ones:\n%s", what, exc)
                outcome[what] = str(exc)
            except Exception as exc:
                log.exception("%s not reloaded, keeping the previous ones", what)
                outcome[what] = f"{type(exc).__name__}: {exc}"
            else:
                log.info("%s reloaded: %s", what, summary)
                outcome[what] = None
        return outcome


def api_keys_hook(store: ApiKeyStore, path: Path) -> Hook:
    def reload() -> str:
        fresh = ApiKeyStore.load(path)  # ConfigError names the file and the entry
        store.replace(fresh)
        return f"{len(fresh)} key(s) from {path}"

    return reload


def keyring_hook(path: Path, consumers: list[KeyConsumer]) -> Hook:
    def reload() -> str:
        keys = load_keys(path)  # ConfigError names the file and the line
        for consume in consumers:
            consume(keys)
        return f"{len(keys)} key(s) from {path}"

    return reload

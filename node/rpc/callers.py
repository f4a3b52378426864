"""Which roles may call which method: each service names them (`CALLERS`), every server enforces them.

The caller's roles come from its certificate (`cynode.peer_auth.peer_identity`: each node's leaf
certificate names the roles the node runs), never from what the request says. The services say:

    worker       Predict, Embed                      a gateway (the only one that streams tokens)
                 LoadModel, UnloadModel              a gateway or a coordinator
                 Health, ListModels                  any member, and tools (`cynode` commands, benchmarks)
    coordinator  Admit, Heartbeat, Complete, Cancel  a gateway
                 ListModels, Status                  any member, and tools

A refused call gets PERMISSION_DENIED (an `AuthError`, 403 `permission_denied`) naming the caller's
node id and the roles it would need, before the handler runs. Calls that have no certificate are
not checked: in-process calls (`cynode.rpc.local`) never left this node, and a daemon serves the
network only with mTLS; the plaintext servers of test harnesses are the one other case.

Why, when every member holds the cluster key: a node's certificate is issued by the node itself
from its own `[node] roles`, so this does not stand against a member that is itself hostile (it
could issue itself any roles). It stops what is far likelier: a tool, a misconfigured node or a
stale address reaching a method it has no business calling (a worker-only host filling the prompt
cache through Complete, a monitoring script with the key running generations on workers).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from cynode.errors import AuthError
from cynode.peer_auth import peer_identity

__all__ = ["ANY_MEMBER", "Callers", "authorize"]

log = logging.getLogger(__name__)

ANY_MEMBER: frozenset[str] = frozenset()
"""No role needed: any holder of the cluster key (a node or a tool) may call."""

Callers = Mapping[str, frozenset[str]]
"""Method name (as in the .proto) -> the roles of which the caller needs one (ANY_MEMBER: none)."""


def authorize(context, method: str, allowed: frozenset[str]) -> None:
    """Raise AuthError unless the caller's certificate names one of `allowed` (see the module docstring)."""
    if not allowed:
        return
    peer = peer_identity(context)
    if peer is None or peer.roles & allowed:
        return
    needed = " or ".join(sorted(allowed))
    has = ", ".join(sorted(peer.roles)) or "none"
    log.warning("refused %s from %s: its certificate names roles %s, the method needs %s", method, peer.node_id, has, needed)
    raise AuthError(f"{method} is for a {needed}; {peer.node_id} runs {has}", status=403, code="permission_denied")

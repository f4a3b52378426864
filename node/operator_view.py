"""What the operator-facing HTTP endpoints (status page, Prometheus discovery) read, in one object.

The daemon fills it once the parts exist and hands the same object to every HTTP app of the node
(`[metrics] listen` and the gateway port), so both ports answer the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from .api_keys import ApiKeyStore, require
from .errors import AuthError
from .leader_record import LeaderInfo, read_leader
from .node_stats import ClusterHistory
from .openai_errors import response_for

if TYPE_CHECKING:
    from cynode.gossip import Member

    from .gossip_agent import GossipAgent
    from .redis_conn import RedisConnection


@dataclass
class OperatorView:
    node_id: str
    cluster: str
    api_keys: ApiKeyStore
    membership: GossipAgent | None = None
    redis: RedisConnection | None = None
    history: ClusterHistory = field(default_factory=ClusterHistory)

    def members(self) -> list[Member]:
        return self.membership.members_raw() if self.membership is not None else []

    async def leader(self) -> LeaderInfo | None:
        """The leader as Redis records it; None without Redis or while Redis does not answer (the
        overview then falls back to what the coordinators gossip)."""
        if self.redis is None:
            return None
        try:
            return await read_leader(self.redis)
        except Exception:
            return None

    def refuse(self, request: web.Request) -> web.Response | None:
        """None when the request carries an admin key, else the 401/403 response in OpenAI's shape."""
        try:
            require(self.api_keys.authenticate(request.headers.get("Authorization")), "admin")
        except AuthError as exc:
            return response_for(exc)
        return None

"""Who is calling: the bearer token of every request, resolved once, before its handler runs.

A token is, in this order, a key from the API-key file (in memory, no I/O), a JWT (when `[gateway]`
configures a way to verify one; checked in memory) or a key made at run time (Redis, cached). The
middleware stores what it found, or the AuthError, on the request; handlers call
`GatewayState.authenticate(request, scope)`, which stays synchronous and checks the scope.
"""

from __future__ import annotations

from aiohttp import web
from cynode.api_keys import ApiKey, ApiKeyStore, bearer_token, check_expiry, unknown_key
from cynode.errors import AuthError

from .keys_store import RuntimeKeys

IDENTITY = web.RequestKey("cynode_identity", object)  # the ApiKey, or the AuthError to raise


class Identities:
    def __init__(self, keys: ApiKeyStore, runtime: RuntimeKeys | None = None, jwt=None) -> None:
        self.keys = keys
        self.runtime = runtime
        self.jwt = jwt

    async def resolve(self, authorization: str | None) -> ApiKey:
        token = bearer_token(authorization)
        found = self.keys.find(token)
        if found is None and self.jwt is not None and self.jwt.looks_like(token):
            found = self.jwt.verify(token)
        if found is None and self.runtime is not None:
            found = await self.runtime.find(token)
        if found is None:
            raise unknown_key(token)
        check_expiry(found)
        return found


@web.middleware
async def identify(request: web.Request, handler):
    """Resolve the caller of any request that names one (requests without a header cost nothing)."""
    authorization = request.headers.get("Authorization")
    if authorization is not None:
        identities: Identities = request.app["state"].identities
        try:
            request[IDENTITY] = await identities.resolve(authorization)
        except AuthError as exc:
            request[IDENTITY] = exc
    return await handler(request)

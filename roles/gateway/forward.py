"""Any node answers the API: a node without the gateway role forwards `/v1/*` to a gateway peer.

Served on `[gateway] listen` when the gateway role is off (and `[gateway] forward` is on), so a
client may point at any node of the cluster. Gateways are found through gossip (live members
with the gateway role and the address they publish); one is picked at random, and the next is
tried when it cannot be reached, which is safe because nothing has been sent back yet. The request
goes on unchanged (method, path, query, body, `Authorization`: the gateway authenticates), the
answer comes back as it is made, byte for byte, so server-sent events stream through. Both carry
`X-Cynode-Forwarded-By: <this node>`; the answer also names the gateway in `X-Cynode-Gateway`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import aiohttp
from aiohttp import web
from cynode.config import split_host_port
from cynode.errors import StartupError
from cynode.openai_errors import error_response

log = logging.getLogger(__name__)

__all__ = ["FORWARDED_BY", "Forwarder", "gateway_peers"]

FORWARDED_BY = "X-Cynode-Forwarded-By"
CONNECT_TIMEOUT_S = 3.0
# Hop-by-hop headers (RFC 9110 section 7.6.1) and those aiohttp sets itself.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length"}


def gateway_peers(members, own_id: str) -> list[tuple[str, str]]:
    """(node id, host:port) of every live gateway among gossip `members` but this node."""
    found = []
    for member in members:
        address = member.meta.get("addr", {}).get("gateway")
        if (member.id != own_id and str(member.state) == "alive" and address
                and "gateway" in member.meta.get("roles", ())):
            found.append((member.id, address))
    return found


class Forwarder:
    def __init__(self, node_id: str, listen: str, peers: Callable[[], list[tuple[str, str]]], *,
                 max_body_bytes: int) -> None:
        self._node_id = node_id
        self._listen = listen
        self._peers = peers
        self._max_body = max_body_bytes
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S))
        app = web.Application(client_max_size=self._max_body)
        app.add_routes([web.route("*", "/v1/{tail:.*}", self.forward)])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0,
                                     handler_cancellation=True)
        await self._runner.setup()
        host, port = split_host_port(self._listen)
        try:
            await web.TCPSite(self._runner, host, port, reuse_address=True).start()
        except OSError as exc:
            raise StartupError(f"[gateway] listen {self._listen!r} (forwarding to gateway peers): "
                               f"{exc.strerror or exc}") from exc
        log.info("no gateway role here: forwarding http://%s/v1/* to gateway peers", self._listen)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, f"request body is larger than {self._max_body} bytes", code="request_too_large")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers[FORWARDED_BY] = self._node_id
        if request.remote:
            prior = request.headers.get("X-Forwarded-For")
            headers["X-Forwarded-For"] = f"{prior}, {request.remote}" if prior else request.remote
        peers = self._peers()
        random.shuffle(peers)
        for peer_id, address in peers:
            try:
                upstream = await self._session.request(request.method, f"http://{address}{request.rel_url}",
                                                       headers=headers, data=body, allow_redirects=False)
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                log.warning("gateway %s at %s unreachable (%s); trying another", peer_id, address, exc)
                continue
            try:
                return await self._relay(request, upstream, peer_id)
            finally:
                upstream.release()
        return error_response(503, "this node has no gateway role and no gateway peer is reachable right now; "
                              "retry shortly or send the request to a gateway node", code="no_gateway",
                              headers={"Retry-After": "2"})

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse, peer_id: str) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in _HOP:
                response.headers.add(name, value)
        response.headers[FORWARDED_BY] = self._node_id
        response.headers["X-Cynode-Gateway"] = peer_id
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except aiohttp.ClientError as exc:  # the gateway went away mid-answer: the client sees the cut
            log.warning("gateway %s broke off a forwarded answer: %s", peer_id, exc)
            return response
        await response.write_eof()
        return response

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

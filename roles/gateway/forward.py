"""Any node answers the API: a node without the gateway role forwards `/v1/*` to a gateway peer.

Served on `[gateway] listen` when the gateway role is off (and `[gateway] forward` is on), so a
client may point at any node of the cluster. Gateways are found through gossip (live members
with the gateway role and the address they publish); one is picked at random, and the next is
tried when it cannot be reached, which is safe because nothing has been sent back yet. The request
goes on unchanged (method, path, query, body, `Authorization`: the gateway authenticates), the
answer comes back as it is made, byte for byte, so server-sent events stream through. Both carry
`X-Cynode-Forwarded-By: <this node>`; the answer also names the gateway in `X-Cynode-Gateway`.

A WebSocket upgrade (`/v1/chat/completions/ws`) is forwarded as a socket: this node opens one to the
gateway with the client's headers, accepts the client's, and copies messages both ways until either
side closes. A gateway that refuses the upgrade (a bad key, say) is asked the same without the
upgrade, and its answer (the error body) goes back as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
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
# Made anew by the client side of a forwarded WebSocket.
_WEBSOCKET = {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-accept"}


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
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._forward_socket(request, headers, peers)
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
        return _no_gateway()

    async def _forward_socket(self, request: web.Request, headers: dict[str, str],
                              peers: list[tuple[str, str]]) -> web.StreamResponse:
        headers = {k: v for k, v in headers.items() if k.lower() not in _WEBSOCKET}
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        for peer_id, address in peers:
            url = f"http://{address}{request.rel_url}"
            try:
                upstream = await self._session.ws_connect(url, headers=headers, protocols=protocols,
                                                          max_msg_size=self._max_body)
            except aiohttp.WSServerHandshakeError:
                # Refused (401, 403, 429...): the same request without the upgrade gets the body that says why.
                try:
                    refused = await self._session.get(url, headers=headers, allow_redirects=False)
                except (TimeoutError, aiohttp.ClientConnectionError):
                    continue
                try:
                    return await self._relay(request, refused, peer_id)
                finally:
                    refused.release()
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                log.warning("gateway %s at %s unreachable (%s); trying another", peer_id, address, exc)
                continue
            client = web.WebSocketResponse(protocols=protocols, max_msg_size=self._max_body)
            client.headers[FORWARDED_BY] = self._node_id
            client.headers["X-Cynode-Gateway"] = peer_id
            try:
                await client.prepare(request)
                async with asyncio.TaskGroup() as group:
                    group.create_task(_copy(client, upstream))
                    group.create_task(_copy(upstream, client))
            finally:
                await upstream.close()
            return client
        return _no_gateway()

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


def _no_gateway() -> web.Response:
    return error_response(503, "this node has no gateway role and no gateway peer is reachable right now; "
                          "retry shortly or send the request to a gateway node", code="no_gateway",
                          headers={"Retry-After": "2"})


async def _copy(source, sink) -> None:
    """Messages from one WebSocket to the other until `source` closes; then `sink` is closed too."""
    try:
        async for message in source:
            if message.type is aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type is aiohttp.WSMsgType.ERROR:
                break
    except (ConnectionError, aiohttp.ClientError):
        pass  # one side went away: the other is closed below
    finally:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await sink.close()

"""`GET /v1/chat/completions/ws`: chat completions over one WebSocket, the same streams as SSE.

The key is checked at the upgrade (the `Authorization` header; a bad one is a plain 401 and no
socket). Then each text message the client sends is one chat-completion request body, answered in
order on the same request path as `POST /v1/chat/completions` (the key's limits, the cache, retries):

- streamed (the default on a socket; `"stream": false` asks for the whole answer): one message per
  chunk, the very objects the SSE stream carries in its `data:` lines, then
  `{"object": "chat.completion.done", "id", "cache": "hit"|"miss"|null, "degraded"}`;
- not streamed: one `chat.completion` message, then the same done message;
- refused or failed (bad JSON, a missing field, a limit, no worker, a failure mid-stream): one
  message `{"error": {message, type, param, code}, "status": <the HTTP status it would have had>}`
  instead of the done message. The socket stays open for the next request.

So each request ends with exactly one done or error message. Requests on one socket are answered
one after another; open more sockets to run them side by side.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import WSMsgType, web
from cynode.errors import CynodeError, RequestError
from cynode.openai_errors import error_body

from .chat import chat_completions
from .degraded import DEGRADED_HEADER
from .state import GatewayState

log = logging.getLogger(__name__)

__all__ = ["DONE", "routes"]

PATH = "/v1/chat/completions/ws"
DONE = "chat.completion.done"


def routes() -> list[web.RouteDef]:
    return [web.get(PATH, chat_socket)]


class _SocketSink:
    """Takes the SSE bytes `choices.answer` writes and sends each `data:` object as one message.

    Quacks like the `web.StreamResponse` a stream is written to; keep-alive comments are dropped (the
    socket itself stays open) and so is `[DONE]` (the done message replaces it)."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self.headers: dict[str, str] = {}
        self.prepared = False
        self.failed = False
        self.id: str | None = None

    async def prepare(self, request: web.Request) -> None:
        self.prepared = True

    async def write(self, data: bytes) -> None:
        for event in data.split(b"\n\n"):
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            payload = event[6:]
            if payload.startswith(b'{"error":'):
                self.failed = True  # after the first chunk: the upstream broke off (502, had it been HTTP)
                payload = payload[:-1] + b',"status":502}'
            elif self.id is None:
                self.id = orjson.loads(payload).get("id")
            await self._ws.send_str(payload.decode())

    async def write_eof(self) -> None:
        return None


def _streamed_by_default(raw: bytes) -> bytes:
    """The body with `"stream": true` when it says nothing of streaming (bad JSON is left for the parser
    to refuse in OpenAI's words)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    if isinstance(data, dict) and data.get("stream") is None:
        data["stream"] = True
        return orjson.dumps(data)
    return raw


async def chat_socket(request: web.Request) -> web.StreamResponse:
    """Chat completions over a WebSocket: one request per message, the SSE stream's chunks back."""
    state: GatewayState = request.app["state"]
    state.authenticate(request, "inference")  # before the upgrade: no key, no socket
    ws = web.WebSocketResponse(max_msg_size=state.config.max_body_bytes)
    if not ws.can_prepare(request).ok:
        raise RequestError(f"{PATH} takes a WebSocket upgrade (GET with Upgrade: websocket); for plain HTTP "
                           "use POST /v1/chat/completions", status=400, code="websocket_required")
    await ws.prepare(request)
    # An idle socket does not hold up a drain (the gateway's stop closes it); one answering does.
    in_flight = state.in_flight
    in_flight.leave()
    try:
        async for message in ws:
            if message.type is WSMsgType.ERROR:
                log.debug("chat socket closed with an error: %s", ws.exception())
                break
            if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            raw = message.data.encode("utf-8", "surrogatepass") if message.type is WSMsgType.TEXT else message.data
            in_flight.enter()
            try:
                await _serve(request, ws, raw)
            finally:
                in_flight.leave()
    except ConnectionError:
        pass  # the client went away while it was being answered
    finally:
        in_flight.enter()  # the middleware that counted this request leaves once more
    return ws


async def _serve(request: web.Request, ws: web.WebSocketResponse, raw: bytes) -> None:
    sink = _SocketSink(ws)
    try:
        reply = await chat_completions(request, body=_streamed_by_default(raw), sink=sink)
    except CynodeError as exc:
        await _send_error(ws, exc.status, exc.message, param=exc.param, code=exc.code)
        return
    except ConnectionError:
        return  # the client went away
    except Exception:
        log.exception("unexpected error serving a chat socket request")
        await _send_error(ws, 500, "internal error; the gateway log has the details", code="internal_error")
        return
    if sink.failed:
        return
    if reply is sink:
        headers, request_id = sink.headers, sink.id
    else:
        headers, request_id = reply.headers, reply.headers.get("X-Request-Id")
        await ws.send_str(reply.body.decode())
    await ws.send_str(orjson.dumps({"object": DONE, "id": request_id, "cache": headers.get("X-Cache"),
                                    "degraded": headers.get(DEGRADED_HEADER) == "true"}).decode())


async def _send_error(ws: web.WebSocketResponse, status: int, message: str, **fields) -> None:
    await ws.send_str(orjson.dumps({**error_body(message, status=status, **fields), "status": status}).decode())

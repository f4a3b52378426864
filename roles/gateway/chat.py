"""`POST /v1/chat/completions`: validate, authorize, run a `Completion`, answer as SSE or JSON."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from cynode.errors import CynodeError
from cynode.rpc import coordinator_pb2

from . import openai_format as fmt
from .completion import Completion
from .openai_schema import parse_chat_request
from .request_context import GatewayState

log = logging.getLogger(__name__)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "inference")
    chat = parse_chat_request(await state.read_body(request))
    state.authorize_model(key, chat.model)
    request_id = fmt.completion_id()
    completion = Completion(
        state.upstream, chat, request_id=request_id,
        idempotency_key=request.headers.get("Idempotency-Key") or request_id,
        priority=key.priority if key.priority else state.default_priority, key_name=key.name,
        cache_mode=_cache_mode(request.headers.get("Cache-Control", "")),
        timeout=state.config.request_timeout, max_attempts=state.config.max_retries + 1,
    )
    started = time.monotonic()
    pieces = completion.deltas()
    # The first piece decides the answer's status: errors before it are plain HTTP errors.
    first = await anext(pieces, None)
    state.metrics.ttft.observe(time.monotonic() - started)
    relay = _stream if chat.stream else _collect
    try:
        return await relay(request, state, completion, chat.include_usage, first, pieces)
    finally:
        await pieces.aclose()
        state.record(completion)


def _cache_mode(header: str) -> int:
    directives = {d.strip().lower() for d in header.split(",")}
    if "no-store" in directives:
        return coordinator_pb2.CACHE_NO_STORE
    if "no-cache" in directives:
        return coordinator_pb2.CACHE_NO_CACHE
    return coordinator_pb2.CACHE_DEFAULT


async def _stream(request, state, completion: Completion, include_usage: bool, first, pieces) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
        "X-Request-Id": completion.request_id, "X-Cache": "hit" if completion.cached else "miss",
    })
    await response.prepare(request)
    created = int(time.time())

    def event(**fields) -> bytes:
        return fmt.sse_event(fmt.chat_chunk(completion.request_id, completion.model, created, include_usage=include_usage, **fields))

    try:
        await response.write(event(role="assistant", content=""))
        if first is not None:
            await response.write(event(content=first))
        async for piece in pieces:
            await response.write(event(content=piece))
        await response.write(event(finish_reason=completion.finish_reason))
        if include_usage:
            usage = fmt.usage_dict(completion.prompt_tokens, completion.completion_tokens)
            await response.write(fmt.sse_event(fmt.usage_chunk(completion.request_id, completion.model, created, usage)))
    except CynodeError as exc:
        # Past the first byte the status is sent; the failure travels as an error event.
        log.warning("stream %s failed: %s", completion.request_id, exc.message)
        await response.write(fmt.sse_event(fmt.error_body(exc.message, type="server_error", code="upstream_failed")))
    except ConnectionError:
        return response  # the client left; closing `pieces` cancels the work
    await response.write(fmt.SSE_DONE)
    await response.write_eof()
    return response


async def _collect(request, state, completion: Completion, include_usage: bool, first, pieces) -> web.Response:
    parts = [first] if first is not None else []
    async for piece in pieces:
        parts.append(piece)
    usage = fmt.usage_dict(completion.prompt_tokens, completion.completion_tokens)
    body = fmt.chat_completion(completion.request_id, completion.model, int(time.time()), "".join(parts),
                               completion.finish_reason, usage)
    return web.json_response(body, headers={"X-Request-Id": completion.request_id,
                                            "X-Cache": "hit" if completion.cached else "miss"})

"""`POST /v1/chat/completions`: validate, authorize, run a `Completion`, answer as SSE or JSON."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from cynode.errors import CynodeError
from cynode.rpc import coordinator_pb2

from . import openai_format as fmt
from .completion import Completion
from .degraded import DEGRADED_HEADER
from .limits import estimate_tokens
from .openai_schema import parse_chat_request
from .state import GatewayState

log = logging.getLogger(__name__)

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "inference")
    chat = parse_chat_request(await state.read_body(request))
    state.authorize_model(key, chat.model)
    request_id = fmt.completion_id()
    admission = await state.admit(request, key, request_id, estimate_tokens(
        sum(len(m.content) for m in chat.messages), chat.sampling.max_tokens))
    completion = Completion(
        state.upstream, model=chat.model, messages=chat.messages, sampling=chat.sampling, request_id=request_id,
        idempotency_key=request.headers.get("Idempotency-Key") or request_id,
        priority=state.priority(key), key_name=key.name,
        cache_mode=_cache_mode(request.headers.get("Cache-Control", "")),
        timeout=state.config.request_timeout, max_attempts=state.config.max_retries + 1, stream=chat.stream,
        degraded=state.degraded,
    )
    started = time.monotonic()
    pieces = completion.deltas()
    outcome = "failed"
    try:
        # The first piece decides the answer's status: errors before it are plain HTTP errors.
        first = await anext(pieces, None)
        state.metrics.ttft.observe(time.monotonic() - started)
        if chat.stream:
            response, delivered = await _stream(request, completion, chat.include_usage, first, pieces)
        else:
            response, delivered = await _collect(completion, first, pieces), True
        outcome = completion.outcome if delivered else "cancelled"
        return response
    except BaseException as exc:
        if not isinstance(exc, CynodeError):
            outcome = "cancelled"  # the client went away (or the gateway is stopping)
        raise
    finally:
        await pieces.aclose()
        state.record(outcome, completion.completion_tokens)
        if admission is not None:
            admission.settle(completion.prompt_tokens, completion.completion_tokens)


def _cache_mode(header: str) -> int:
    if not header:
        return coordinator_pb2.CACHE_DEFAULT
    directives = {d.strip().lower() for d in header.split(",")}
    if "no-store" in directives:
        return coordinator_pb2.CACHE_NO_STORE
    if "no-cache" in directives:
        return coordinator_pb2.CACHE_NO_CACHE
    return coordinator_pb2.CACHE_DEFAULT


def _headers(completion: Completion) -> dict[str, str]:
    headers = {"X-Request-Id": completion.request_id, "X-Cache": "hit" if completion.cached else "miss"}
    if completion.degraded:
        headers[DEGRADED_HEADER] = "true"
    return headers


async def _stream(request, completion: Completion, include_usage: bool, first, pieces) -> tuple[web.StreamResponse, bool]:
    """The answer as server-sent events, and whether it reached the client (False: it went away)."""
    response = web.StreamResponse(headers={**_SSE_HEADERS, **_headers(completion)})
    await response.prepare(request)
    chunks = fmt.ChunkEncoder(completion.request_id, completion.model, int(time.time()), include_usage=include_usage)
    write = response.write
    try:
        await write(chunks.role())
        try:
            if first is not None:
                await write(chunks.content(first))
            async for piece in pieces:
                await write(chunks.content(piece))
            await write(chunks.finish(completion.finish_reason))
            if include_usage:
                await write(chunks.usage(completion.prompt_tokens, completion.completion_tokens))
        except CynodeError as exc:
            # Past the first byte the status is sent; the failure travels as an error event.
            log.warning("stream %s failed: %s", completion.request_id, exc.message)
            await write(fmt.sse_event({"error": {"message": exc.message, "type": "server_error", "param": None,
                                                 "code": exc.code or "upstream_failed"}}))
        await write(fmt.SSE_DONE)
        await response.write_eof()
    except ConnectionError:
        return response, False  # closing `pieces` cancels the work
    return response, True


async def _collect(completion: Completion, first, pieces) -> web.Response:
    parts = [first] if first is not None else []
    async for piece in pieces:
        parts.append(piece)
    usage = fmt.usage_dict(completion.prompt_tokens, completion.completion_tokens)
    body = fmt.chat_completion(completion.request_id, completion.model, int(time.time()), "".join(parts),
                               completion.finish_reason, usage)
    return web.Response(body=fmt.json_bytes(body), content_type="application/json", headers=_headers(completion))

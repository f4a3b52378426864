"""`POST /v1/chat/completions`: admit through the coordinator, stream from the worker, relay.

Retries on another worker happen only before the first token reaches the client (a worker that
fails later ends the stream with an error event; mid-stream migration comes with the gateway
issue). Every admitted request is reported back with Complete, success or not, so its lease is freed.
"""

from __future__ import annotations

import logging
import time

import grpc
import grpc.aio
from aiohttp import web

from cynode.errors import RequestError, UnavailableError
from cynode.rpc import common_pb2, coordinator_pb2, worker_pb2

from . import openai_format as fmt
from .openai_schema import ChatCompletionRequest, parse_chat_request
from .request_context import GatewayState

log = logging.getLogger(__name__)

# Worker answers that mean "your request is wrong", not "try another worker".
_CLIENT_FAULTS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "inference")
    chat = parse_chat_request(await state.read_body(request))
    state.authorize_model(key, chat.model)
    request_id = fmt.completion_id()
    created = int(time.time())
    started = time.monotonic()
    assignment, call, first = await _open_stream(state, chat, key, request_id)
    state.metrics.ttft.observe(time.monotonic() - started)
    relay = _stream if chat.stream else _collect
    return await relay(request, state, chat, request_id, created, assignment, call, first)


async def _open_stream(state: GatewayState, chat: ChatCompletionRequest, key, request_id: str):
    exclude: list[str] = []
    last_error = ""
    for _ in range(state.config.max_retries + 1):
        assignment = await state.upstream.admit(
            request_id=request_id, model=chat.model, priority=key.priority, key_name=key.name, exclude=exclude,
        )
        call = state.upstream.worker(assignment.worker_address).Predict(
            _predict_request(chat, request_id, assignment), timeout=state.config.request_timeout,
        )
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            await state.upstream.complete(assignment, ok=False, error=f"{exc.code().name}: {exc.details()}")
            if exc.code() in _CLIENT_FAULTS:
                raise RequestError(exc.details() or "bad request", status=_CLIENT_FAULTS[exc.code()]) from None
            log.warning("worker %s failed before the first token (%s); trying another", assignment.worker_id, exc.code().name)
            exclude.append(assignment.worker_id)
            last_error = f"{assignment.worker_id}: {exc.details() or exc.code().name}"
            continue
        if first is grpc.aio.EOF:
            await state.upstream.complete(assignment, ok=False, error="empty stream")
            exclude.append(assignment.worker_id)
            last_error = f"{assignment.worker_id}: ended the stream without a token"
            continue
        return assignment, call, first
    raise UnavailableError(f"every worker tried failed before the first token (last: {last_error})", retry_after=2)


def _predict_request(chat: ChatCompletionRequest, request_id: str, assignment: coordinator_pb2.Assignment) -> worker_pb2.PredictRequest:
    s = chat.sampling
    sampling = common_pb2.SamplingParams(stop=list(s.stop))
    for name in ("temperature", "top_p", "top_k", "max_tokens", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        value = getattr(s, name)
        if value is not None:
            setattr(sampling, name, value)
    return worker_pb2.PredictRequest(
        request_id=request_id, model=assignment.model or chat.model, sampling=sampling,
        messages=[common_pb2.ChatMessage(role=m.role, content=m.content) for m in chat.messages],
        lease_id=assignment.lease_id, epoch=assignment.epoch,
    )


async def _chunks(call, first):
    """Every chunk of the worker's stream, the already-read first one included."""
    chunk = first
    while chunk is not grpc.aio.EOF:
        yield chunk
        chunk = await call.read()


async def _stream(request, state, chat, request_id, created, assignment, call, first) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-Id": request_id,
    })
    await response.prepare(request)
    model = assignment.model or chat.model
    usage_on = chat.include_usage

    def event(**fields) -> bytes:
        return fmt.sse_event(fmt.chat_chunk(request_id, model, created, include_usage=usage_on, **fields))

    usage = common_pb2.Usage()
    ok, error = False, ""
    try:
        await response.write(event(role="assistant", content=""))
        async for chunk in _chunks(call, first):
            if chunk.text:
                await response.write(event(content=chunk.text))
            if chunk.finish_reason:
                usage = chunk.usage
                await response.write(event(finish_reason=chunk.finish_reason))
        if usage_on:
            await response.write(fmt.sse_event(fmt.usage_chunk(request_id, model, created, _usage(usage))))
        await response.write(fmt.SSE_DONE)
        ok = True
    except grpc.aio.AioRpcError as exc:
        error = f"worker {assignment.worker_id}: {exc.details() or exc.code().name}"
        log.warning("stream %s broke: %s", request_id, error)
        body = fmt.error_body(f"the worker failed mid-stream: {error}", type="server_error", code="worker_failed")
        await response.write(fmt.sse_event(body))
        await response.write(fmt.SSE_DONE)
    except (ConnectionResetError, ConnectionError) as exc:
        error = f"client went away: {exc}"
        call.cancel()
    finally:
        state.record(ok, usage)
        await state.upstream.complete(assignment, ok=ok, error=error,
                                      prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
    await response.write_eof()
    return response


async def _collect(request, state, chat, request_id, created, assignment, call, first) -> web.Response:
    parts: list[str] = []
    finish_reason, usage = "stop", common_pb2.Usage()
    ok, error = False, ""
    try:
        async for chunk in _chunks(call, first):
            parts.append(chunk.text)
            if chunk.finish_reason:
                finish_reason, usage = chunk.finish_reason, chunk.usage
        ok = True
    except grpc.aio.AioRpcError as exc:
        error = f"worker {assignment.worker_id}: {exc.details() or exc.code().name}"
        raise UnavailableError(f"the worker failed mid-generation: {error}", retry_after=1) from None
    finally:
        state.record(ok, usage)
        await state.upstream.complete(assignment, ok=ok, error=error,
                                      prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
    body = fmt.chat_completion(request_id, assignment.model or chat.model, created, "".join(parts), finish_reason, _usage(usage))
    return web.json_response(body, headers={"X-Request-Id": request_id})


def _usage(usage: common_pb2.Usage) -> dict:
    return fmt.usage_dict(usage.prompt_tokens, usage.completion_tokens)

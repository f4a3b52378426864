"""`/v1/responses`: OpenAI's Responses API (create, streamed or not; retrieve; delete), on the chat path.

A response is one chat completion through the cluster (`choices.answer`: the key's limits, the
prompt cache, retries and migration, the degraded mode, `X-Cache`): `instructions` become a system
message, and `previous_response_id` puts the stored conversation it ends before this input.
Stored responses (`store`, true by default) live in Redis (`responses_store`), readable by the key
that made them from any gateway.
"""

from __future__ import annotations

import functools

from aiohttp import web
from cynode.errors import UnavailableError
from cynode.inference import ChatMessage

from . import openai_format as fmt
from .chat import cache_mode_of, idempotency_key
from .choices import Choice, answer
from .completion import Completion
from .responses_format import ResponseAnswer, deleted
from .responses_schema import parse_responses_request
from .responses_store import ResponseStore
from .state import GatewayState

__all__ = ["RESPONSES", "routes"]

RESPONSES = web.AppKey("responses_store", ResponseStore)


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/responses", create_response),
        web.get("/v1/responses/{response_id}", retrieve_response),
        web.delete("/v1/responses/{response_id}", delete_response),
    ]


def _store(request: web.Request) -> ResponseStore:
    store = request.app.get(RESPONSES)
    if store is None:
        raise UnavailableError("stored responses need Redis, and this gateway has none", code="unavailable")
    return store


async def create_response(request: web.Request) -> web.StreamResponse:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "inference")
    body = parse_responses_request(await state.read_body(request))
    state.authorize_model(key, body.model)
    history: tuple[ChatMessage, ...] = ()
    if body.previous_response_id is not None:
        previous = await _store(request).get(key, body.previous_response_id, param="previous_response_id")
        history = previous.messages
    turn = (*history, *body.input)
    messages = ((ChatMessage(role="system", content=body.instructions),) if body.instructions else ()) + turn
    store = request.app.get(RESPONSES) if body.store else None
    reply = ResponseAnswer(body, model=body.model, history=turn,
                           save=functools.partial(store.put, key) if store is not None else None)
    completion = Completion(
        state.upstream, model=body.model, messages=messages, sampling=body.sampling, request_id=reply.id,
        idempotency_key=idempotency_key(request, reply.id, 0, 1), priority=state.priority(key), key_name=key.name,
        cache_mode=cache_mode_of(request.headers.get("Cache-Control", ""), body.sampling),
        timeout=state.config.request_timeout, max_attempts=state.config.max_retries + 1, stream=body.stream,
        degraded=state.degraded,
    )
    return await answer(request, state, key, reply.id, [Choice(index=0, completion=completion)], reply,
                        prompt_chars=sum(len(m.content) for m in messages), max_tokens=body.sampling.max_tokens,
                        stream=body.stream, include_usage=False, framing=reply)


async def retrieve_response(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "inference")
    stored = await _store(request).get(key, request.match_info["response_id"])
    return web.Response(body=fmt.json_bytes(stored.response), content_type="application/json")


async def delete_response(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "inference")
    response_id = request.match_info["response_id"]
    await _store(request).delete(key, response_id)
    return web.Response(body=fmt.json_bytes(deleted(response_id)), content_type="application/json")

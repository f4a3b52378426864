"""`POST /v1/completions`: OpenAI's (legacy) text completions, through the same request path as chat.

A prompt is sent to the worker as is (no chat template); each prompt of a batched request gets
`n` choices, numbered prompt by prompt (choice `i * n + j` is prompt `i`'s `j`-th), as OpenAI does.
`echo` puts the prompt before each choice's text; `suffix` (fill-in-the-middle) is refused: no
engine here builds such prompts, and answering without it would answer another question.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from cynode.inference import TokenLogprob

from . import openai_format as fmt
from .chat import cache_mode_of, choice_sampling, idempotency_key
from .choices import Choice, answer
from .completion import Completion
from .openai_schema import parse_completion_request
from .state import GatewayState

log = logging.getLogger(__name__)


async def completions(request: web.Request) -> web.StreamResponse:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "inference")
    body = parse_completion_request(await state.read_body(request))
    state.authorize_model(key, body.model)
    request_id = fmt.text_completion_id()
    if body.user:
        log.debug("request %s is for end user %r", request_id, body.user)
    cache_mode = cache_mode_of(request.headers.get("Cache-Control", ""), body.sampling)
    total = len(body.prompts) * body.n
    choices = []
    for p, prompt in enumerate(body.prompts):
        for j in range(body.n):
            index = p * body.n + j
            choices.append(Choice(index=index, prompt_index=p, prefix=prompt if body.echo else "", completion=Completion(
                state.upstream, model=body.model, messages=(), prompt=prompt,
                sampling=choice_sampling(body.sampling, j),
                request_id=request_id if total == 1 else f"{request_id}-{index}",
                idempotency_key=idempotency_key(request, request_id, index, total),
                priority=state.priority(key), key_name=key.name,
                cache_mode=cache_mode, timeout=state.config.request_timeout,
                max_attempts=state.config.max_retries + 1, stream=body.stream, degraded=state.degraded,
            )))
    return await answer(request, state, key, request_id, choices, TEXT, prompt_chars=max(map(len, body.prompts)),
                        max_tokens=body.sampling.max_tokens, stream=body.stream, include_usage=body.include_usage)


def text_logprobs(entries: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The legacy completions `logprobs` object: parallel lists, `top_logprobs` as token → logprob maps."""
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
        "text_offset": offsets,
    }


class TextFormat:
    def encoder(self, request_id: str, model: str, created: int, include_usage: bool, index: int):
        return fmt.TextChunkEncoder(request_id, model, created, include_usage=include_usage, index=index)

    def opening(self, encoder, choice: Choice) -> bytes | None:
        return encoder.content(choice.prefix) if choice.prefix else None

    def logprobs(self, entries: list[TokenLogprob]) -> dict[str, Any] | None:
        return text_logprobs(entries)

    def whole(self, request_id: str, model: str, created: int, choices: list[Choice], usage: dict[str, int]):
        return fmt.text_completion(request_id, model, created, [
            fmt.text_choice(c.index, c.prefix + "".join(c.parts), c.completion.finish_reason,
                            text_logprobs(c.logprobs, len(c.prefix)) if c.completion.wants_logprobs else None)
            for c in sorted(choices, key=lambda c: c.index)], usage)


TEXT = TextFormat()

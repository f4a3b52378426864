"""`POST /v1/chat/completions`: validate, authorize, run one `Completion` per choice, answer as SSE or JSON.

With `tools` (and a tool_choice other than "none") the answer is read for tool calls
(`tool_calls.py`): they leave as `message.tool_calls` (streamed: `delta.tool_calls`, one chunk per
call as it closes) with finish_reason "tool_calls".
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from aiohttp import web
from cynode.inference import TokenLogprob
from cynode.rpc import coordinator_pb2
from cynode.sampling import SamplingParams

from . import openai_format as fmt
from .choices import Choice, answer
from .completion import Completion
from .openai_schema import parse_chat_request
from .state import GatewayState
from .tool_calls import ToolCallParser, parse_answer
from .tools_schema import Tooling

log = logging.getLogger(__name__)


async def chat_completions(request: web.Request, *, body: bytes | None = None,
                           sink: web.StreamResponse | None = None) -> web.StreamResponse:
    """`body` and `sink`: a request that came another way than this HTTP request's body, and where its
    stream goes (the WebSocket endpoint, `chat_ws.py`)."""
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "inference")
    chat = parse_chat_request(await state.read_body(request) if body is None else body)
    state.authorize_model(key, chat.model)
    request_id = fmt.completion_id()
    if chat.user:
        log.debug("request %s is for end user %r", request_id, chat.user)
    cache_mode = cache_mode_of(request.headers.get("Cache-Control", ""), chat.sampling)
    choices = [
        Choice(index=i, completion=Completion(
            state.upstream, model=chat.model, messages=chat.messages, sampling=choice_sampling(chat.sampling, i),
            request_id=request_id if chat.n == 1 else f"{request_id}-{i}",
            idempotency_key=idempotency_key(request, request_id, i, chat.n),
            priority=state.priority(key), key_name=key.name,
            cache_mode=cache_mode, timeout=state.config.request_timeout, max_attempts=state.config.max_retries + 1,
            stream=chat.stream, degraded=state.degraded, tools=chat.tooling.tools,
        ))
        for i in range(chat.n)
    ]
    form = ToolChatFormat(chat.tooling) if chat.tooling.parses_calls else CHAT
    return await answer(request, state, key, request_id, choices, form,
                        prompt_chars=sum(len(m.content) for m in chat.messages) + len(chat.tooling.tools),
                        max_tokens=chat.sampling.max_tokens, stream=chat.stream, include_usage=chat.include_usage,
                        sink=sink)


def cache_mode_of(header: str, sampling: SamplingParams) -> int:
    """The prompt-cache mode a request's Cache-Control asks for. The cache keeps text only, so an
    answer with log probabilities is neither looked up nor stored."""
    if sampling.logprobs is not None:
        return coordinator_pb2.CACHE_NO_STORE
    if not header:
        return coordinator_pb2.CACHE_DEFAULT
    directives = {d.strip().lower() for d in header.split(",")}
    if "no-store" in directives:
        return coordinator_pb2.CACHE_NO_STORE
    if "no-cache" in directives:
        return coordinator_pb2.CACHE_NO_CACHE
    return coordinator_pb2.CACHE_DEFAULT


def choice_sampling(sampling: SamplingParams, index: int) -> SamplingParams:
    """Choice `index`'s sampling: with a seed, seed + index, so `n` seeded choices differ from each
    other and each is repeatable."""
    if index and sampling.seed is not None:
        return replace(sampling, seed=(sampling.seed + index + 2**63) % 2**64 - 2**63)
    return sampling


def idempotency_key(request: web.Request, request_id: str, index: int, n: int) -> str:
    base = request.headers.get("Idempotency-Key") or request_id
    return base if n == 1 else f"{base}#{index}"


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """Chat's `logprobs` object: `{"content": [{token, logprob, bytes, top_logprobs}]}`."""
    return {"content": [{
        "token": e.token, "logprob": e.logprob, "bytes": list(e.bytes),
        "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in e.top],
    } for e in entries], "refusal": None}


class ChatFormat:
    def encoder(self, request_id: str, model: str, created: int, include_usage: bool, index: int):
        return fmt.ChunkEncoder(request_id, model, created, include_usage=include_usage, index=index)

    def opening(self, encoder, choice: Choice) -> bytes:
        return encoder.role()

    def logprobs(self, entries: list[TokenLogprob]) -> dict[str, Any] | None:
        return chat_logprobs(entries)

    def whole(self, request_id: str, model: str, created: int, choices: list[Choice], usage: dict[str, int]):
        return fmt.chat_completion_of(request_id, model, created, [
            fmt.chat_choice(c.index, "".join(c.parts), c.completion.finish_reason,
                            chat_logprobs(c.logprobs) if c.completion.wants_logprobs else None)
            for c in choices], usage)


CHAT = ChatFormat()


class ToolChatFormat(ChatFormat):
    """Chat whose answers are read for tool calls."""

    def __init__(self, tooling: Tooling) -> None:
        self._names, self._parallel = tooling.names, tooling.parallel

    def encoder(self, request_id: str, model: str, created: int, include_usage: bool, index: int):
        return ToolChunkEncoder(super().encoder(request_id, model, created, include_usage, index),
                                ToolCallParser(self._names, parallel=self._parallel))

    def whole(self, request_id: str, model: str, created: int, choices: list[Choice], usage: dict[str, int]):
        out = []
        for c in choices:
            parsed = parse_answer("".join(c.parts), self._names, parallel=self._parallel)
            calls = [fmt.tool_call(call.id, call.name, call.arguments) for call in parsed.calls]
            reason = "tool_calls" if calls else c.completion.finish_reason
            out.append(fmt.chat_choice(c.index, parsed.content, reason,
                                       chat_logprobs(c.logprobs) if c.completion.wants_logprobs else None, calls))
        return fmt.chat_completion_of(request_id, model, created, out, usage)


class ToolChunkEncoder:
    """A chat stream's encoder that sends content as the parser releases it and each call when it closes."""

    def __init__(self, inner: fmt.ChunkEncoder, parser: ToolCallParser) -> None:
        self._inner, self._parser = inner, parser
        self.role, self.usage = inner.role, inner.usage

    def content(self, text: str, logprobs: dict[str, Any] | None = None) -> bytes:
        return self._chunks(*self._parser.feed(text), logprobs)

    def finish(self, reason: str) -> bytes:
        chunks = self._chunks(*self._parser.finish(), None)
        return chunks + self._inner.finish("tool_calls" if self._parser.calls else reason)

    def _chunks(self, content: str, calls, logprobs) -> bytes:
        out = self._inner.content(content, logprobs) if content or logprobs is not None else b""
        if calls:
            first = len(self._parser.calls) - len(calls)
            out += self._inner.tool_calls([fmt.tool_call(c.id, c.name, c.arguments, index=first + i)
                                           for i, c in enumerate(calls)])
        return out

"""Builders for the JSON shapes OpenAI clients parse: completions, stream chunks, models.

Plain dicts and bytes rather than models: the gateway only writes these, and the official SDKs are
strict about which keys are present (a `usage` key in every chunk only when it was asked for, a
final chunk with no choices), so each builder spells out exactly what OpenAI sends. Errors have
their one builder in `cynode.openai_errors`.

Streams are the hot path: `ChunkEncoder` renders every chunk of a stream from two byte strings
made once per request around the JSON-escaped text, instead of building and encoding a dict per
token.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

__all__ = ["SSE_DONE", "SSE_KEEPALIVE", "ChunkEncoder", "TextChunkEncoder", "chat_choice", "chat_completion",
           "chat_completion_of", "completion_id", "json_bytes", "model_card", "model_list", "sse_event",
           "text_choice", "text_completion", "text_completion_id", "tool_call", "usage_dict"]

SSE_DONE = b"data: [DONE]\n\n"
# An SSE comment: clients ignore it, proxies see bytes flowing while the first token is awaited.
SSE_KEEPALIVE = b": keep-alive\n\n"


def json_bytes(obj: Any) -> bytes:
    return orjson.dumps(obj)


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(16)


def text_completion_id() -> str:
    return "cmpl-" + secrets.token_hex(16)


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(id: str, model: str, created: int, text: str, finish_reason: str,
                    usage: dict[str, int]) -> dict[str, Any]:
    """A whole (non-streamed) chat completion with one choice."""
    return chat_completion_of(id, model, created, [chat_choice(0, text, finish_reason)], usage)


def chat_choice(index: int, text: str | None, finish_reason: str, logprobs: dict[str, Any] | None = None,
                tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`tool_calls` (`tool_call`'s dicts): the message carries them, and `content` may be None."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}


def tool_call(call_id: str, name: str, arguments: str, index: int | None = None) -> dict[str, Any]:
    """One call in OpenAI's shape; `index` (its position in the message) only in stream chunks."""
    call: dict[str, Any] = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return call if index is None else {"index": index, **call}


def chat_completion_of(id: str, model: str, created: int, choices: list[dict[str, Any]],
                       usage: dict[str, int]) -> dict[str, Any]:
    """A whole (non-streamed) chat completion with the given choices (`chat_choice`)."""
    return {"id": id, "object": "chat.completion", "created": created, "model": model, "choices": choices,
            "usage": usage}


def text_choice(index: int, text: str, finish_reason: str, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def text_completion(id: str, model: str, created: int, choices: list[dict[str, Any]],
                    usage: dict[str, int]) -> dict[str, Any]:
    """A whole (non-streamed) text completion (`/v1/completions`) with the given choices (`text_choice`)."""
    return {"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices,
            "usage": usage}


def _text(text: str) -> bytes:
    """A JSON string; a lone surrogate (which UTF-8 cannot carry) becomes "?" rather than failing a live stream."""
    try:
        return orjson.dumps(text)
    except orjson.JSONEncodeError:
        return orjson.dumps(text.encode("utf-8", "replace").decode("utf-8"))


class ChunkEncoder:
    """The SSE events of one streamed chat completion.

    With `include_usage` (the client sent `stream_options.include_usage`), every chunk carries
    `"usage": null` and the stream ends with `usage`'s chunk; without it there is no `usage` key.
    OpenAI's first chunk has `delta: {"role": "assistant", "content": ""}`, its last `delta: {}`.
    """

    def __init__(self, id: str, model: str, created: int, *, include_usage: bool, index: int = 0) -> None:
        self._head = (b'data: {"id":' + orjson.dumps(id) + b',"object":"chat.completion.chunk","created":'
                      + str(created).encode() + b',"model":' + orjson.dumps(model) + b',"choices":')
        self._tail = (b',"usage":null}\n\n' if include_usage else b"}\n\n")
        self._index = b'[{"index":' + str(index).encode()
        self._content_head = self._head + self._index + b',"delta":{"content":'
        self._content_tail = b'},"logprobs":null,"finish_reason":null}]' + self._tail

    def role(self) -> bytes:
        return (self._head + self._index + b',"delta":{"role":"assistant","content":""},"logprobs":null,'
                b'"finish_reason":null}]' + self._tail)

    def content(self, text: str, logprobs: dict[str, Any] | None = None) -> bytes:
        if logprobs is not None:
            return (self._content_head + _text(text) + b'},"logprobs":' + orjson.dumps(logprobs)
                    + b',"finish_reason":null}]' + self._tail)
        return self._content_head + _text(text) + self._content_tail

    def finish(self, reason: str) -> bytes:
        return (self._head + self._index + b',"delta":{},"logprobs":null,"finish_reason":' + orjson.dumps(reason)
                + b"}]" + self._tail)

    def tool_calls(self, calls: list[dict[str, Any]]) -> bytes:
        """A chunk carrying whole calls (`tool_call` with `index`): id, name and all the arguments at once."""
        return (self._head + self._index + b',"delta":{"tool_calls":' + orjson.dumps(calls)
                + b'},"logprobs":null,"finish_reason":null}]' + self._tail)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The extra last chunk sent with `include_usage`: no choices, only the token counts."""
        return self._head + b'[],"usage":' + orjson.dumps(usage_dict(prompt_tokens, completion_tokens)) + b"}\n\n"


class TextChunkEncoder:
    """The SSE events of one streamed text completion (`/v1/completions`), one choice per encoder.

    Same rules as `ChunkEncoder` for `usage`; each chunk carries `text` (no role chunk); the last
    carries `finish_reason` with empty text.
    """

    def __init__(self, id: str, model: str, created: int, *, include_usage: bool, index: int = 0) -> None:
        self._head = (b'data: {"id":' + orjson.dumps(id) + b',"object":"text_completion","created":'
                      + str(created).encode() + b',"model":' + orjson.dumps(model) + b',"choices":[{"index":'
                      + str(index).encode() + b',"text":')
        self._tail = (b',"usage":null}\n\n' if include_usage else b"}\n\n")
        self._outer = self._head.split(b',"choices":')[0] + b',"choices":'

    def content(self, text: str, logprobs: dict[str, Any] | None = None) -> bytes:
        return (self._head + _text(text) + b',"logprobs":' + (orjson.dumps(logprobs) if logprobs else b"null")
                + b',"finish_reason":null}]' + self._tail)

    def finish(self, reason: str) -> bytes:
        return self._head + b'"","logprobs":null,"finish_reason":' + orjson.dumps(reason) + b"}]" + self._tail

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return self._outer + b'[],"usage":' + orjson.dumps(usage_dict(prompt_tokens, completion_tokens)) + b"}\n\n"


def model_card(model_id: str, owner: str, created: int) -> dict[str, Any]:
    """One model as OpenAI describes it (`GET /v1/models/{id}`, and each item of the list)."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": owner}


def model_list(ids_with_owner: list[tuple[str, str]], created: int) -> dict[str, Any]:
    """The body of GET /v1/models, from (model id, owner) pairs."""
    return {"object": "list", "data": [model_card(model_id, owner, created) for model_id, owner in ids_with_owner]}


def sse_event(obj: Any) -> bytes:
    """One server-sent event of any JSON object (compact; UTF-8, as SSE mandates)."""
    try:
        text = orjson.dumps(obj)
    except orjson.JSONEncodeError:  # a lone surrogate somewhere: the slow, forgiving way
        import json

        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")
    return b"data: " + text + b"\n\n"

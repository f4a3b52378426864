"""Builders for the JSON shapes OpenAI clients parse: errors, completions, stream chunks, models.

Plain dicts rather than models: the gateway only writes these, and the official SDKs are strict
about which keys are present (a `usage` key in every chunk only when it was asked for, a final
chunk with no choices), so each builder spells out exactly what OpenAI sends.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

__all__ = [
    "SSE_DONE",
    "chat_chunk",
    "chat_completion",
    "completion_id",
    "error_body",
    "error_type_for_status",
    "model_list",
    "sse_event",
    "usage_chunk",
    "usage_dict",
]

SSE_DONE = b"data: [DONE]\n\n"

_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope; SDKs read `error.message` and raise by HTTP status."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_type_for_status(status: int) -> str:
    """The `error.type` OpenAI uses for an HTTP status."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(16)


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(id: str, model: str, created: int, text: str, finish_reason: str,
                    usage: dict[str, int]) -> dict[str, Any]:
    """A whole (non-streamed) chat completion with one choice."""
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }],
        "usage": usage,
    }


def chat_chunk(id: str, model: str, created: int, *, content: str | None = None, role: str | None = None,
               finish_reason: str | None = None, include_usage: bool = False) -> dict[str, Any]:
    """One streamed chunk. The delta holds only the keys given: OpenAI's last chunk has `delta: {}`.

    With `include_usage` (the client sent `stream_options.include_usage`), every chunk carries
    `"usage": null` and the stream ends with `usage_chunk`; without it there is no `usage` key.
    """
    delta: dict[str, str] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    chunk: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(id: str, model: str, created: int, usage: dict[str, int]) -> dict[str, Any]:
    """The extra last chunk sent with `include_usage`: no choices, only the token counts."""
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


def model_list(ids_with_owner: list[tuple[str, str]], created: int) -> dict[str, Any]:
    """The body of GET /v1/models, from (model id, owner) pairs."""
    return {
        "object": "list",
        "data": [{"id": model_id, "object": "model", "created": created, "owned_by": owner}
                 for model_id, owner in ids_with_owner],
    }


def sse_event(obj: Any) -> bytes:
    """One server-sent event. Compact JSON keeps frames small; UTF-8 is what SSE mandates anyway.

    A lone surrogate (which UTF-8 cannot carry) becomes "?" rather than failing a live stream.
    """
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return b"data: " + text.encode("utf-8", "replace") + b"\n\n"

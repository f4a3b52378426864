"""The Responses API's shapes: the response object and its streamed, typed events.

A stream is `event: <type>` / `data: <json>` pairs, each with a `sequence_number` from 0:
`response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, then `response.output_text.delta` per piece, then
`response.output_text.done`, `response.content_part.done`, `response.output_item.done` and
`response.completed` (`response.incomplete` when `max_output_tokens` cut the answer). A failure
after the first event is an `error` event and `response.failed`. There is no `data: [DONE]`.

`ResponseAnswer` is one request's answer: the `Format` and `Framing` that `choices.answer` runs
(with one choice: the Responses API has no `n`), and the encoder of its events. When the choice
is complete it stores the response (if asked), before the client reads the end, so a client that
has read `response.completed` can retrieve it at once.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from cynode.errors import CynodeError
from cynode.inference import ChatMessage

from .choices import Choice
from .responses_schema import ResponsesRequest

log = logging.getLogger(__name__)

__all__ = ["ResponseAnswer", "deleted", "message_id", "response_id", "sse"]


def response_id() -> str:
    return "resp_" + secrets.token_hex(24)


def message_id() -> str:
    return "msg_" + secrets.token_hex(24)


def sse(kind: str, body: dict[str, Any]) -> bytes:
    """One typed server-sent event."""
    try:
        data = orjson.dumps(body)
    except orjson.JSONEncodeError:  # a lone surrogate in the text: sent as "?" rather than failing the stream
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def deleted(response_id: str) -> dict[str, Any]:
    return {"id": response_id, "object": "response.deleted", "deleted": True}


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens}


def _clean(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


class ResponseAnswer:
    """One `POST /v1/responses`: its response object, events and storing.

    `save(response, conversation)`: stores the finished response (None: do not store)."""

    done = b""  # no `data: [DONE]` in this API

    def __init__(self, request: ResponsesRequest, *, model: str, history: tuple[ChatMessage, ...],
                 save: Callable[[dict[str, Any], tuple[ChatMessage, ...]], Awaitable[None]] | None) -> None:
        self.id = response_id()
        self.message_id = message_id()
        self.created_at = int(time.time())
        self._request = request
        self._model = model
        self._history = history  # the earlier turns and this input: the conversation the answer continues
        self._save = save
        self._sequence = 0
        self._choice: Choice | None = None
        self.final: dict[str, Any] | None = None

    # --- the response object ------------------------------------------------------------------

    def response(self, status: str, *, output: list[dict[str, Any]] | None = None, usage=None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:
        r = self._request
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": r.instructions, "max_output_tokens": r.max_output_tokens, "model": self._model,
            "output": output or [], "parallel_tool_calls": False, "previous_response_id": r.previous_response_id,
            "reasoning": {"effort": None, "summary": None}, "store": r.store and self._save is not None,
            "temperature": r.sampling.temperature, "text": {"format": {"type": "text"}}, "tool_choice": "none",
            "tools": [], "top_p": r.sampling.top_p, "truncation": "disabled", "usage": usage,
            "user": r.user, "metadata": r.metadata,
        }

    def _message(self, text: str | None, status: str) -> dict[str, Any]:
        content = [] if text is None else [self._part(text)]
        return {"id": self.message_id, "type": "message", "status": status, "role": "assistant", "content": content}

    @staticmethod
    def _part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _finished(self, choice: Choice) -> dict[str, Any]:
        completion = choice.completion
        self._model = completion.model or self._model
        status = "incomplete" if completion.finish_reason == "length" else "completed"
        text = _clean("".join(choice.parts))
        return self.response(status, output=[self._message(text, status)],
                             usage=_usage(completion.prompt_tokens, completion.completion_tokens))

    # --- Framing ------------------------------------------------------------------------------

    async def completed(self, choices: list[Choice]) -> None:
        (choice,) = choices
        self.final = self._finished(choice)
        if self._save is None:
            return
        conversation = (*self._history, ChatMessage(role="assistant", content=self.final["output"][0]["content"][0]["text"]))
        try:
            await self._save(self.final, conversation)
        except CynodeError as exc:  # Redis away: the answer is still the client's, only not kept
            log.warning("response %s not stored: %s", self.id, exc.message)
            self.final["store"] = False

    def error(self, request_id: str, exc: CynodeError) -> bytes:
        code = exc.code or "upstream_failed"
        return (self._event("error", {"code": code, "message": exc.message, "param": exc.param})
                + self._event("response.failed", {"response": self.response(
                    "failed", error={"code": "server_error", "message": exc.message})}))

    # --- Format -------------------------------------------------------------------------------

    def encoder(self, request_id: str, model: str, created: int, include_usage: bool, index: int) -> ResponseAnswer:
        self._model = model or self._model
        return self

    def opening(self, encoder: ResponseAnswer, choice: Choice) -> bytes:
        self._choice = choice
        started = self.response("in_progress")
        return (self._event("response.created", {"response": started})
                + self._event("response.in_progress", {"response": started})
                + self._event("response.output_item.added", {"output_index": 0,
                                                             "item": self._message(None, "in_progress")})
                + self._event("response.content_part.added", {"item_id": self.message_id, "output_index": 0,
                                                              "content_index": 0, "part": self._part("")}))

    def logprobs(self, entries) -> None:
        return None  # not asked for: `top_logprobs` and `include` are refused

    def whole(self, request_id: str, model: str, created: int, choices: list[Choice], usage) -> dict[str, Any]:
        return self.final if self.final is not None else self._finished(choices[0])

    # --- the encoder of the events --------------------------------------------------------------

    def _event(self, kind: str, body: dict[str, Any]) -> bytes:
        event = sse(kind, {"type": kind, **body, "sequence_number": self._sequence})
        self._sequence += 1
        return event

    def content(self, text: str, logprobs=None) -> bytes:
        return self._event("response.output_text.delta", {"item_id": self.message_id, "output_index": 0,
                                                          "content_index": 0, "delta": text, "logprobs": []})

    def finish(self, reason: str) -> bytes:
        final = self.final if self.final is not None else self._finished(self._choice)
        message = final["output"][0]
        text = message["content"][0]["text"]
        where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
        return (self._event("response.output_text.done", {**where, "text": text, "logprobs": []})
                + self._event("response.content_part.done", {**where, "part": message["content"][0]})
                + self._event("response.output_item.done", {"output_index": 0, "item": message})
                + self._event("response.completed" if final["status"] == "completed" else "response.incomplete",
                              {"response": final}))

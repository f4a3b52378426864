"""The schemas of `/v1/responses` for `/openapi.json` (validated by `responses_schema`, as
`openapi_models` describes the chat bodies `openai_schema` validates)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .openapi_models import _Open
from .responses_schema import MAX_METADATA

__all__ = ["Response", "ResponseCreateRequest", "ResponseDeleted", "ResponseStreamEvent"]


class InputTextPart(_Open):
    type: Literal["input_text", "output_text"]
    text: str


class InputMessage(_Open):
    type: Literal["message"] | None = Field(None, description="Only message items are taken.")
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputTextPart] = Field(description="Text, or text parts (joined with newlines).")


class ResponseCreateRequest(_Open):
    model: str = Field(description="A model id or alias from `GET /v1/models`.")
    input: str | list[InputMessage] = Field(description="A user message, or the conversation's messages.")
    instructions: str | None = Field(None, description="A system message before the input (not carried over "
                                                       "by previous_response_id).")
    previous_response_id: str | None = Field(None, description="Continue the conversation a stored response "
                                                               "(of the same key) ends.")
    max_output_tokens: int | None = Field(None, ge=1, le=2**31 - 1, description="Most tokens to generate.")
    temperature: float | None = Field(None, ge=0, le=2, description="0 to 2; 0 is greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling, in (0, 1].")
    stream: bool | None = Field(False, description="Answer as typed server-sent events.")
    store: bool | None = Field(True, description="Keep the response (30 days) for GET and previous_response_id.")
    metadata: dict[str, str] | None = Field(None, max_length=MAX_METADATA, description="Up to 16 string pairs.")
    user: str | None = Field(None, description="An end-user id, for the operator's logs.")


class OutputText(BaseModel):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"]
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"]
    content: list[OutputText]


class ResponseUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens_details: dict[str, int]


class Response(BaseModel):
    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputMessage]
    previous_response_id: str | None
    store: bool
    temperature: float | None
    top_p: float | None
    usage: ResponseUsage | None
    metadata: dict[str, str]


class ResponseStreamEvent(BaseModel):
    """One `event:`/`data:` pair of a streamed response; `type` repeats the event's name."""

    type: str = Field(description="response.created, response.in_progress, response.output_item.added, "
                                  "response.content_part.added, response.output_text.delta, "
                                  "response.output_text.done, response.content_part.done, "
                                  "response.output_item.done, response.completed (or response.incomplete); "
                                  "error and response.failed on a failure")
    sequence_number: int
    response: Response | None = None
    delta: str | None = None
    text: str | None = None


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response.deleted"]
    deleted: bool

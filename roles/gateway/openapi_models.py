"""The request and response schemas of the gateway's endpoints, as pydantic models, for `/openapi.json`.

Requests are validated by `openai_schema` (hand-written, for OpenAI's exact 400s); these models
describe the same bodies for documentation and client generators, and `tests/unit/test_openapi.py`
checks that what the parser accepts and what these models declare agree. Every field a handler
reads is here; fields OpenAI defines that cynode refuses (see `openai_schema._UNSUPPORTED`) are
declared too, since sending them is valid JSON that gets a clear 400 rather than a 422.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    # OpenAI clients send fields cynode does not know; they are ignored, not refused.
    model_config = ConfigDict(extra="allow")


# --- shared ---------------------------------------------------------------------------------------

class StreamOptions(_Open):
    include_usage: bool | None = Field(None, description="End the stream with a chunk that carries `usage`.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


_SAMPLING = {
    "temperature": (float | None, "0 to 2; 0 is greedy."),
    "top_p": (float | None, "Nucleus sampling, in (0, 1]."),
    "top_k": (int | None, "Sample among the k most likely tokens; 0 is no cut."),
    "max_tokens": (int | None, "Most tokens to generate."),
    "seed": (int | None, "Makes sampling repeatable (per choice: seed + index)."),
    "presence_penalty": (float | None, "-2 to 2."),
    "frequency_penalty": (float | None, "-2 to 2."),
    "repetition_penalty": (float | None, "HF-style repetition penalty, > 0."),
}


class _Sampling(_Open):
    model: str = Field(description="A model id or alias from `GET /v1/models`.")
    stream: bool | None = Field(False, description="Answer as server-sent events.")
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2, description=_SAMPLING["temperature"][1])
    top_p: float | None = Field(None, gt=0, le=1, description=_SAMPLING["top_p"][1])
    top_k: int | None = Field(None, ge=0, description=_SAMPLING["top_k"][1])
    max_tokens: int | None = Field(None, ge=1, description=_SAMPLING["max_tokens"][1])
    seed: int | None = Field(None, description=_SAMPLING["seed"][1])
    presence_penalty: float | None = Field(None, ge=-2, le=2, description=_SAMPLING["presence_penalty"][1])
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description=_SAMPLING["frequency_penalty"][1])
    repetition_penalty: float | None = Field(None, gt=0, description=_SAMPLING["repetition_penalty"][1])
    stop: str | list[str] | None = Field(None, description="Up to 4 strings; generation stops before any of them.")
    n: int | None = Field(1, ge=1, le=16, description="Choices to generate (at most 16 per request).")
    user: str | None = Field(None, description="An end-user id, for the operator's logs.")
    logit_bias: dict[str, float] | None = Field(None, description="Refused (400) unless empty.")


# --- chat -----------------------------------------------------------------------------------------

class ContentPart(_Open):
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as JSON text.")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = Field(None, description="May be null on an assistant message with tool_calls.")
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="An assistant message's calls (role assistant only).")
    tool_call_id: str | None = Field(None, description="Role tool: the id of the call this message answers (required).")


class FunctionDefinition(_Open):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema of an object; none: no arguments.")
    strict: bool | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: dict[str, str] = Field(description='{"name": <one of the tools>}')


class JsonSchemaFormat(_Open):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="A JSON Schema; none: any JSON.")
    strict: bool | None = Field(None, description="Accepted either way: the output is always constrained.")
    description: str | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = Field(None, description="Required with type json_schema.")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="Wins over max_tokens.")
    logprobs: bool | None = Field(False, description="Return each generated token's log probability.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="With logprobs: the most likely alternatives.")
    response_format: ResponseFormat | None = Field(
        None, description="json_object or json_schema: the answer is constrained (grammar decoding) to such JSON.")
    tools: list[Tool] | None = Field(None, max_length=128, description="Functions the model may call.")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="auto (default with tools), none, required or a named function (forced: the answer is "
                          "constrained to one valid call).")
    parallel_tool_calls: bool | None = Field(None, description="false: at most one call is returned.")


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: Literal["stop", "length", "abort", "tool_calls"] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChunkToolCall(ToolCall):
    index: int = Field(description="The call's position in the message; each call comes whole, in one chunk.")


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion; the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


# --- completions ----------------------------------------------------------------------------------

class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(description="One prompt or several (each gets n choices). Token ids are refused.")
    echo: bool | None = Field(False, description="Put the prompt before each choice's text.")
    logprobs: int | None = Field(None, ge=0, le=20, description="Log probabilities of this many alternatives per token.")
    suffix: str | None = Field(None, description="Refused (400): no engine here does fill-in-the-middle.")
    best_of: int | None = Field(None, description="Only equal to n.")


class TextLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: TextLogprobs | None
    finish_reason: str | None


class TextCompletion(BaseModel):
    """A whole text completion, or (streamed) one `data:` event of it, whose `usage` is then null or absent."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


# --- embeddings -----------------------------------------------------------------------------------

class EmbeddingRequest(_Open):
    model: str = Field(description="An embedding model, such as the built-in all-minilm-l6-v2.")
    input: str | list[str] = Field(description="A text or up to 256 texts. Token ids are refused.")
    encoding_format: Literal["float", "base64"] | None = Field("float", description="base64: little-endian float32s.")
    dimensions: int | None = Field(None, ge=1, description="Only the model's own size.")
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# --- models ---------------------------------------------------------------------------------------

class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


# --- cluster --------------------------------------------------------------------------------------

class ClusterStatus(BaseModel):
    """Leader, queue and workers as the leader sees them (admin keys only)."""

    model_config = ConfigDict(extra="allow")
    leader: dict[str, Any] | None
    queue: dict[str, int]
    cache: dict[str, float]
    workers: list[dict[str, Any]]

"""Validate OpenAI `POST /v1/chat/completions` and `POST /v1/completions` bodies into frozen requests.

Hand-written rather than a pydantic model: every refusal must name the exact JSON path
(`messages[1].content[0].type`) and read like OpenAI's own 400s, and clients rely on the
OpenAI rules (null means "not given", booleans are not numbers, unknown fields are ignored).
Parameters we cannot honour yet are refused rather than silently dropped, because a client
asking for them would otherwise get plausible-looking but wrong output. `tools`, `tool_choice` and
`response_format` are validated by `tools_schema`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import orjson
from cynode.inference import ChatMessage
from cynode.sampling import MAX_LOGPROBS, RULES, SamplingParams, check_stop, check_value

from .json_input import fail as _fail
from .json_input import kind_of as _kind
from .json_input import show as _show
from .tools_schema import Tooling, parse_tool_calls_field, parse_tooling

__all__ = ["MAX_CHOICES", "MAX_EMBEDDING_INPUTS", "ROLES", "ChatCompletionRequest", "CompletionRequest",
           "EmbeddingRequest", "parse_chat_request", "parse_completion_request", "parse_embedding_request"]

ROLES = ("system", "user", "assistant", "tool", "developer")
# Most choices one request may ask for (n, times the prompts of a batched completion): each is a
# generation of its own, so a bigger number is a denial of service rather than a request.
MAX_CHOICES = 16
# Most texts one embeddings request may carry (OpenAI allows 2048; a CPU worker is slower).
MAX_EMBEDDING_INPUTS = 256
# OpenAI's default for /v1/completions (chat has none: up to the context).
COMPLETIONS_MAX_TOKENS = 16


@dataclass(frozen=True, slots=True)
class ChatCompletionRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    stream: bool = False
    include_usage: bool = False
    sampling: SamplingParams = SamplingParams()
    user: str | None = None
    n: int = 1
    tooling: Tooling = Tooling()


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """`POST /v1/completions`: each prompt gets `n` choices, numbered prompt by prompt."""

    model: str
    prompts: tuple[str, ...]
    stream: bool = False
    include_usage: bool = False
    sampling: SamplingParams = SamplingParams()
    user: str | None = None
    n: int = 1
    echo: bool = False


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...]
    encoding_format: str = "float"  # or "base64": little-endian float32s
    dimensions: int | None = None
    user: str | None = None


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    """Parse and validate an embeddings body; raises RequestError (400) naming the field."""
    data = _load_json(body)
    model = _model(data)
    value = data.get("input")
    if value is None:
        _fail("'input' is required", "input", "missing_required_parameter")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        _fail(f"input must be a string or an array of strings; got {_kind(value)}", "input", "invalid_type")
    if not items:
        _fail("input must not be an empty array", "input", "empty_array")
    if len(items) > MAX_EMBEDDING_INPUTS:
        _fail(f"input may hold at most {MAX_EMBEDDING_INPUTS} texts; got {len(items)}", "input", "invalid_value")
    for i, item in enumerate(items):
        where = "input" if isinstance(value, str) else f"input[{i}]"
        if isinstance(item, (int, list)) and not isinstance(item, bool):
            _fail("input as token ids is not supported; send the text", where, "unsupported_value")
        if not isinstance(item, str):
            _fail(f"{where} must be a string; got {_show(item)}", where, "invalid_type")
        if not item:
            _fail(f"{where} must not be empty", where, "invalid_value")
    encoding = data.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if encoding not in ("float", "base64"):
        _fail(f"encoding_format must be 'float' or 'base64'; got {_show(encoding)}", "encoding_format",
              "invalid_value")
    dimensions = data.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        _fail(f"dimensions must be a positive integer; got {_show(dimensions)}", "dimensions", "invalid_value")
    return EmbeddingRequest(model=model, inputs=tuple(items), encoding_format=encoding, dimensions=dimensions,
                            user=_user(data))


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Parse and validate a chat completion body; raises RequestError (400) naming the field."""
    data = _load_json(body)
    model = _model(data)
    stream = _bool(data, "stream", default=False)
    include_usage = _stream_options(data.get("stream_options"), stream)
    _refuse_unsupported(data, _UNSUPPORTED)
    sampling = _sampling(data)
    if _bool(data, "logprobs", default=False):
        sampling = replace(sampling, logprobs=_top_logprobs(data.get("top_logprobs"), "top_logprobs"))
    elif data.get("top_logprobs") is not None:
        _fail("top_logprobs needs logprobs: true", "top_logprobs", "invalid_value")
    tooling = parse_tooling(data)
    if tooling.guide is not None:
        sampling = replace(sampling, guide=tooling.guide)
    return ChatCompletionRequest(
        model=model,
        messages=_messages(data.get("messages")),
        stream=stream,
        include_usage=include_usage,
        sampling=sampling,
        user=_user(data),
        n=_n(data, 1),
        tooling=tooling,
    )


def parse_completion_request(body: bytes) -> CompletionRequest:
    """Parse and validate a (legacy) text completion body; raises RequestError (400) naming the field."""
    data = _load_json(body)
    model = _model(data)
    stream = _bool(data, "stream", default=False)
    include_usage = _stream_options(data.get("stream_options"), stream)
    _refuse_unsupported(data, _UNSUPPORTED_COMPLETIONS)
    suffix = data.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        _fail(f"suffix must be a string; got {_show(suffix)}", "suffix", "invalid_type")
    if suffix:
        # Fill-in-the-middle needs a model trained for it and an engine that builds its prompt;
        # none of cynode's engines does, and ignoring the suffix would answer a different question.
        _fail("suffix (fill-in-the-middle) is not supported by cynode's engines; put the text in the prompt",
              "suffix", "unsupported_parameter")
    prompts = _prompts(data.get("prompt"))
    n = _n(data, len(prompts))
    best_of = data.get("best_of")
    if best_of is not None and (isinstance(best_of, bool) or best_of != n):
        _fail(f"best_of is not supported (only best_of equal to n, {n}); got {_show(best_of)}", "best_of",
              "unsupported_parameter")
    echo = _bool(data, "echo", default=False)
    sampling = _sampling(data)
    if data.get("logprobs") is not None:
        if echo:
            # That would need the prompt tokens' log probabilities, which no engine here returns.
            _fail("logprobs with echo is not supported (the prompt's log probabilities are not computed)",
                  "logprobs", "unsupported_parameter")
        sampling = replace(sampling, logprobs=_top_logprobs(data.get("logprobs"), "logprobs"))
    if sampling.max_tokens is None:
        sampling = replace(sampling, max_tokens=COMPLETIONS_MAX_TOKENS)
    return CompletionRequest(model=model, prompts=prompts, stream=stream, include_usage=include_usage,
                             sampling=sampling, user=_user(data), n=n, echo=echo)


def _top_logprobs(value: Any, name: str) -> int:
    """How many alternatives per token (0 to MAX_LOGPROBS); not given is 0."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(f"{name} must be an integer; got {_show(value)}", name, "invalid_type")
    if not 0 <= value <= MAX_LOGPROBS:
        _fail(f"{name} must be between 0 and {MAX_LOGPROBS}; got {_show(value)}", name, "invalid_value")
    return value


def _model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if model is None:
        _fail("'model' is required", "model", "missing_required_parameter")
    if not isinstance(model, str):
        _fail(f"model must be a string; got {_show(model)}", "model", "invalid_type")
    if not model.strip():
        _fail("model must not be empty", "model", "invalid_value")
    return model


def _user(data: dict[str, Any]) -> str | None:
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        _fail(f"user must be a string; got {_show(user)}", "user", "invalid_type")
    return user


def _n(data: dict[str, Any], prompts: int) -> int:
    """`n`, the choices per prompt; all the prompts' choices together are at most MAX_CHOICES."""
    n = data.get("n")
    if n is None:
        n = 1
    elif isinstance(n, bool) or not isinstance(n, int):
        _fail(f"n must be an integer; got {_show(n)}", "n", "invalid_type")
    most = MAX_CHOICES // max(1, prompts)
    if not 1 <= n <= most:
        per = f" for {prompts} prompts" if prompts > 1 else ""
        _fail(f"n must be between 1 and {most}{per} (at most {MAX_CHOICES} choices per request); got {_show(n)}",
              "n", "invalid_value")
    return n


def _prompts(value: Any) -> tuple[str, ...]:
    if value is None:
        _fail("'prompt' is required", "prompt", "missing_required_parameter")
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list):
        _fail(f"prompt must be a string or an array of strings; got {_kind(value)}", "prompt", "invalid_type")
    if not value:
        _fail("prompt must not be an empty array", "prompt", "empty_array")
    if len(value) > MAX_CHOICES:
        _fail(f"prompt may hold at most {MAX_CHOICES} prompts; got {len(value)}", "prompt", "invalid_value")
    for i, item in enumerate(value):
        where = f"prompt[{i}]" if len(value) > 1 or not isinstance(item, str) else "prompt"
        if isinstance(item, (int, list)) and not isinstance(item, bool):
            _fail("prompt as token ids is not supported; send the prompt as text", where, "unsupported_value")
        if not isinstance(item, str):
            _fail(f"{where} must be a string; got {_show(item)}", where, "invalid_type")
        if not item:
            _fail(f"{where} must not be empty", where, "invalid_value")
    return tuple(value)


def _load_json(body: bytes) -> dict[str, Any]:
    if not body or not body.strip():
        _fail("Invalid JSON body: the request body is empty", None, "invalid_json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = _load_slowly(body)
    if not isinstance(data, dict):
        _fail(f"The request body must be a JSON object; got {_kind(data)}", None, "invalid_type")
    return data


def _load_slowly(body: bytes) -> Any:
    """The standard parser, for what orjson refuses: its messages say more (NaN, the line and column),
    and a huge number such as 1e400 is a value to refuse by its field's rule, not a syntax error."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        _fail(f"Invalid JSON body: {exc}", None, "invalid_json")
    except RecursionError:  # "[[[[..." deeper than the parser goes: no request nests like that
        _fail("Invalid JSON body: nested too deeply", None, "invalid_json")


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; JSON (and OpenAI) do not.
    raise ValueError(f"{name} is not valid JSON")


def _messages(value: Any) -> tuple[ChatMessage, ...]:
    if value is None:
        _fail("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(value, list):
        _fail(f"messages must be an array of message objects; got {_kind(value)}", "messages", "invalid_type")
    if not value:
        _fail("messages must contain at least one message; got an empty array", "messages", "empty_array")
    return tuple(_message(item, f"messages[{i}]") for i, item in enumerate(value))


def _message(item: Any, path: str) -> ChatMessage:
    if not isinstance(item, dict):
        _fail(f"{path} must be an object with 'role' and 'content'; got {_kind(item)}", path, "invalid_type")
    role = item.get("role")
    if role is None:
        _fail(f"{path}.role is required", f"{path}.role", "missing_required_parameter")
    if role not in ROLES:
        _fail(f"{path}.role must be one of {', '.join(ROLES)}; got {_show(role)}", f"{path}.role", "invalid_value")
    tool_calls = ()
    if item.get("tool_calls") is not None:
        if role != "assistant":
            _fail(f"{path}.tool_calls is only allowed on an assistant message", f"{path}.tool_calls", "invalid_value")
        tool_calls = parse_tool_calls_field(item["tool_calls"], f"{path}.tool_calls")
    tool_call_id = item.get("tool_call_id")
    if role == "tool" and (not isinstance(tool_call_id, str) or not tool_call_id):
        _fail(f"{path}.tool_call_id is required for a tool message (the id of the call it answers)",
              f"{path}.tool_call_id", "missing_required_parameter" if tool_call_id is None else "invalid_type")
    content = item.get("content")
    if content is None and tool_calls:
        content = ""  # an assistant message that only calls tools
    return ChatMessage(role=role, content=content_text(content, f"{path}.content"), tool_calls=tool_calls,
                       tool_call_id=tool_call_id if role == "tool" else "")


def content_text(value: Any, path: str, parts: tuple[str, ...] = ("text",)) -> str:
    """A message's content: a string, or text content parts (of the types `parts`) joined by newlines."""
    if value is None:
        _fail(f"{path} is required", path, "missing_required_parameter")
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        _fail(f"{path} must be a string or an array of content parts; got {_kind(value)}", path, "invalid_type")
    if not value:
        _fail(f"{path} must not be an empty array", path, "empty_array")
    texts = []
    for i, part in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(part, dict):
            _fail(f"{where} must be a content part object; got {_kind(part)}", where, "invalid_type")
        kind = part.get("type")
        if kind is None:
            _fail(f"{where}.type is required", f"{where}.type", "missing_required_parameter")
        if kind not in parts:
            _fail(f"{where}.type {_show(kind)} is not supported; only text content parts "
                  f"({', '.join(map(repr, parts))}) are", f"{where}.type", "unsupported_value")
        text = part.get("text")
        if not isinstance(text, str):
            _fail(f"{where}.text must be a string; got {_show(text)}", f"{where}.text", "invalid_type")
        texts.append(text)
    # vLLM joins text parts with a newline too, so prompts render the same on either server.
    return "\n".join(texts)


def _stream_options(value: Any, stream: bool) -> bool:
    if value is None:
        return False
    if not stream:
        _fail("stream_options is only allowed when stream is true", "stream_options", "invalid_value")
    if not isinstance(value, dict):
        _fail(f"stream_options must be an object; got {_kind(value)}", "stream_options", "invalid_type")
    return _bool(value, "include_usage", default=False, prefix="stream_options.")


def _sampling(data: dict[str, Any]) -> SamplingParams:
    values = {name: _checked(data, name) for name in RULES}
    # OpenAI deprecated max_tokens in favour of max_completion_tokens, so the newer one wins.
    max_completion_tokens = _checked(data, "max_completion_tokens", rule="max_tokens")
    if max_completion_tokens is not None:
        values["max_tokens"] = max_completion_tokens
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        if values[name] is not None:
            values[name] = float(values[name])
    return SamplingParams(stop=_stop(data.get("stop")), **values)


def _checked(data: dict[str, Any], name: str, *, rule: str | None = None) -> Any:
    """The value of `name` if given and within its rule (cynode.sampling.RULES), else a 400."""
    value = data.get(name)
    if value is None:
        return None
    rule = rule or name
    if isinstance(value, float) and RULES[rule].kind is int and value.is_integer() and not RULES[rule].low <= value <= RULES[rule].high:
        value = int(value)  # orjson reads an integer beyond 64 bits as a float: report the range, not the type
    problem = check_value(rule, value)
    if problem is not None:
        code, must = problem
        _fail(f"{name} {must}; got {_show(value)}", name, code)
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    problem = check_stop(value)
    if problem is not None:
        code, where, must, wrong = problem
        _fail(f"{where} {must}; got {_show(wrong)}", where, code)
    return (value,) if isinstance(value, str) else tuple(value)


# Parameters we accept only at their default value, mapped to "is this value the default?".
_UNSUPPORTED = {
    "functions": lambda v: v in (None, []),
    "function_call": lambda v: v in (None, "none", "auto"),
    "logit_bias": lambda v: v in (None, {}),
    "audio": lambda v: v is None,
    "modalities": lambda v: v in (None, ["text"]),
}
_UNSUPPORTED_COMPLETIONS = {
    "logit_bias": lambda v: v in (None, {}),
}


def _refuse_unsupported(data: dict[str, Any], unsupported: dict) -> None:
    for name, is_default in unsupported.items():
        value = data.get(name)
        if is_default(value):
            continue
        what = name if isinstance(value, (list, dict)) else f"{name}={_show(value)}"
        _fail(f"{what} is not supported yet", name, "unsupported_parameter")


def _bool(data: dict[str, Any], name: str, *, default: bool, prefix: str = "") -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        _fail(f"{prefix}{name} must be a boolean; got {_show(value)}", prefix + name, "invalid_type")
    return value



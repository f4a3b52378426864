"""Validate an OpenAI `POST /v1/responses` body into a frozen `ResponsesRequest`.

The Responses API's input is a string (one user message) or a list of input items; cynode takes
message items (`{"role", "content"}`, with or without `"type": "message"`) whose content is text
(a string, or `input_text` / `output_text` parts). Like chat, what cynode cannot honour (tools,
JSON output formats, background runs, reasoning effort, images) is refused with a 400 naming the
field, rather than answered as if it had not been asked; fields it does not know are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cynode.inference import ChatMessage
from cynode.sampling import SamplingParams, check_value

from .json_input import fail as _fail
from .json_input import kind_of as _kind
from .json_input import show as _show
from .openai_schema import _bool, _load_json, _model, _user, content_text

__all__ = ["MAX_METADATA", "ResponsesRequest", "parse_responses_request"]

INPUT_ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")
MAX_METADATA = 16  # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512
_MAX_METADATA_KEY, _MAX_METADATA_VALUE = 64, 512


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    model: str
    input: tuple[ChatMessage, ...]
    instructions: str | None = None
    previous_response_id: str | None = None
    stream: bool = False
    store: bool = True
    sampling: SamplingParams = SamplingParams()
    metadata: dict[str, str] = field(default_factory=dict)
    user: str | None = None

    @property
    def max_output_tokens(self) -> int | None:
        return self.sampling.max_tokens


def parse_responses_request(body: bytes) -> ResponsesRequest:
    """Parse and validate a responses body; raises RequestError (400) naming the field."""
    data = _load_json(body)
    model = _model(data)
    _refuse_unsupported(data)
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        _fail(f"instructions must be a string; got {_show(instructions)}", "instructions", "invalid_type")
    previous = data.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        _fail(f"previous_response_id must be a response id; got {_show(previous)}", "previous_response_id",
              "invalid_type")
    sampling = SamplingParams(temperature=_number(data, "temperature", "temperature"),
                              top_p=_number(data, "top_p", "top_p"),
                              max_tokens=_number(data, "max_output_tokens", "max_tokens"))
    return ResponsesRequest(
        model=model, input=_input(data.get("input")), instructions=instructions or None,
        previous_response_id=previous, stream=_bool(data, "stream", default=False),
        store=_bool(data, "store", default=True), sampling=sampling, metadata=_metadata(data.get("metadata")),
        user=_user(data),
    )


def _number(data: dict[str, Any], name: str, rule: str) -> Any:
    value = data.get(name)
    if value is None:
        return None
    problem = check_value(rule, value)
    if problem is not None:
        code, must = problem
        _fail(f"{name} {must}; got {_show(value)}", name, code)
    return float(value) if rule != "max_tokens" else value


def _input(value: Any) -> tuple[ChatMessage, ...]:
    if value is None:
        _fail("'input' is required", "input", "missing_required_parameter")
    if isinstance(value, str):
        if not value:
            _fail("input must not be empty", "input", "invalid_value")
        return (ChatMessage(role="user", content=value),)
    if not isinstance(value, list):
        _fail(f"input must be a string or an array of input items; got {_kind(value)}", "input", "invalid_type")
    if not value:
        _fail("input must not be an empty array", "input", "empty_array")
    return tuple(_item(item, f"input[{i}]") for i, item in enumerate(value))


def _item(item: Any, path: str) -> ChatMessage:
    if not isinstance(item, dict):
        _fail(f"{path} must be an input item object; got {_kind(item)}", path, "invalid_type")
    kind = item.get("type", "message")
    if kind != "message":
        _fail(f"{path}.type {_show(kind)} is not supported; only 'message' items are", f"{path}.type",
              "unsupported_value")
    role = item.get("role")
    if role is None:
        _fail(f"{path}.role is required", f"{path}.role", "missing_required_parameter")
    if role not in INPUT_ROLES:
        _fail(f"{path}.role must be one of {', '.join(INPUT_ROLES)}; got {_show(role)}", f"{path}.role",
              "invalid_value")
    return ChatMessage(role=role, content=content_text(item.get("content"), f"{path}.content", TEXT_PARTS))



def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(f"metadata must be an object of strings; got {_kind(value)}", "metadata", "invalid_type")
    if len(value) > MAX_METADATA:
        _fail(f"metadata may hold at most {MAX_METADATA} pairs; got {len(value)}", "metadata", "invalid_value")
    for name, text in value.items():
        if len(name) > _MAX_METADATA_KEY:
            _fail(f"metadata keys may be at most {_MAX_METADATA_KEY} characters; got {_show(name)}",
                  "metadata", "invalid_value")
        if not isinstance(text, str) or len(text) > _MAX_METADATA_VALUE:
            _fail(f"metadata[{name!r}] must be a string of at most {_MAX_METADATA_VALUE} characters; got "
                  f"{_show(text)}", f"metadata.{name}", "invalid_value")
    return dict(value)


# Parameters accepted only at a value that asks for nothing cynode would ignore.
_UNSUPPORTED = {
    "tools": lambda v: v in (None, []),
    "tool_choice": lambda v: v in (None, "none", "auto"),
    "text": lambda v: v is None or v == {} or v == {"format": {"type": "text"}},
    "reasoning": lambda v: v is None or v == {} or (isinstance(v, dict) and v.get("effort") is None
                                                    and v.get("summary") is None),
    "background": lambda v: v in (None, False),
    "include": lambda v: v in (None, []),
    "truncation": lambda v: v in (None, "disabled"),
    "top_logprobs": lambda v: v in (None, 0),
    "conversation": lambda v: v is None,
    "prompt": lambda v: v is None,
}


def _refuse_unsupported(data: dict[str, Any]) -> None:
    for name, is_default in _UNSUPPORTED.items():
        value = data.get(name)
        try:
            fine = is_default(value)
        except TypeError:  # an unhashable value compared by `in`: not the default
            fine = False
        if not fine:
            what = name if isinstance(value, (list, dict)) else f"{name}={_show(value)}"
            _fail(f"{what} is not supported by cynode's Responses API", name, "unsupported_parameter")

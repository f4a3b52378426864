"""Validate chat's `tools`, `tool_choice`, `parallel_tool_calls` and `response_format` into a `Tooling`.

What each asks of the engines:
- `response_format` json_object / json_schema → a `Guide("json", schema)`: the engine constrains
  decoding to JSON valid against the schema (json_object is the schema `{"type": "object"}`).
  `strict` is accepted either way; the output is always constrained.
- `tools` → the functions, as canonical JSON text, rendered into the prompt by the model's chat
  template; the answer is parsed for `<tool_call>` blocks (`tool_calls.py`).
- `tool_choice` "auto" (the default with tools): the model may call; "none": the tools are left out
  of the prompt and nothing is parsed; "required" or a named function → a `Guide("tool_call",
  schema)`: the engine constrains the answer to exactly one `<tool_call>` block whose JSON is
  `{"name": <one of the allowed names>, "arguments": <valid against that function's parameters>}`.
  Such a choice cannot be combined with `response_format` (the answer is the call).

Every refusal is a 400 naming the exact path (`tools[0].function.parameters`), as openai_schema does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from cynode.inference import ToolCall
from cynode.sampling import Guide

from .json_input import fail as _fail
from .json_input import kind_of as _kind
from .json_input import show as _show

__all__ = ["Tooling", "parse_tool_calls_field", "parse_tooling"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
MAX_TOOLS = 128  # as OpenAI
# Deepest nesting of objects and arrays in a schema (vLLM's limit too): grammar compilers recurse.
MAX_SCHEMA_NESTING = 64


@dataclass(frozen=True, slots=True)
class Tooling:
    """What a chat request asks for beyond free text."""

    tools: str = ""  # the functions offered, compact JSON text ("" when none are rendered)
    names: tuple[str, ...] = ()
    choice: str = "none"  # "none", "auto", "required" or a function's name
    parallel: bool = True
    guide: Guide | None = None

    @property
    def parses_calls(self) -> bool:
        """Whether the answer is read for tool calls."""
        return bool(self.tools)


def parse_tooling(data: dict[str, Any]) -> Tooling:
    functions = _tools(data.get("tools"))
    names = tuple(f["function"]["name"] for f in functions)
    choice = _choice(data.get("tool_choice"), names)
    parallel = data.get("parallel_tool_calls")
    if parallel is None:
        parallel = True
    elif not isinstance(parallel, bool):
        _fail(f"parallel_tool_calls must be a boolean; got {_show(parallel)}", "parallel_tool_calls", "invalid_type")
    guide = _response_format(data.get("response_format"))
    if choice not in ("none", "auto"):
        if guide is not None:
            which = "'required'" if choice == "required" else "naming a function"
            _fail(f"response_format cannot be combined with tool_choice {which} (the answer is the tool call)",
                  "response_format", "invalid_value")
        allowed = functions if choice == "required" else [f for f in functions if f["function"]["name"] == choice]
        guide = Guide("tool_call", _canonical(_call_schema(allowed)))
    if choice == "none" or not functions:
        return Tooling(choice=choice, parallel=parallel, guide=guide)
    return Tooling(tools=_canonical(functions), names=names, choice=choice, parallel=parallel, guide=guide)


def parse_tool_calls_field(value: Any, path: str) -> tuple[ToolCall, ...]:
    """An assistant message's `tool_calls` (input): `[{id, type: "function", function: {name, arguments}}]`."""
    if value is None:
        return ()
    if not isinstance(value, list):
        _fail(f"{path} must be an array of tool calls; got {_kind(value)}", path, "invalid_type")
    calls = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(item, dict):
            _fail(f"{where} must be an object; got {_kind(item)}", where, "invalid_type")
        kind = item.get("type", "function")
        if kind != "function":
            _fail(f"{where}.type must be 'function'; got {_show(kind)}", f"{where}.type", "invalid_value")
        call_id = item.get("id")
        if not isinstance(call_id, str) or not call_id:
            _fail(f"{where}.id must be a non-empty string; got {_show(call_id)}", f"{where}.id", "invalid_type")
        function = item.get("function")
        if not isinstance(function, dict):
            _fail(f"{where}.function must be an object; got {_kind(function)}", f"{where}.function", "invalid_type")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            _fail(f"{where}.function.name must be a non-empty string; got {_show(name)}", f"{where}.function.name",
                  "invalid_type")
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            _fail(f"{where}.function.arguments must be a string of JSON; got {_kind(arguments)}",
                  f"{where}.function.arguments", "invalid_type")
        calls.append(ToolCall(call_id, name, arguments))
    return tuple(calls)


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        _fail(f"tools must be an array of tool objects; got {_kind(value)}", "tools", "invalid_type")
    if len(value) > MAX_TOOLS:
        _fail(f"tools may hold at most {MAX_TOOLS} tools; got {len(value)}", "tools", "invalid_value")
    functions, seen = [], set()
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            _fail(f"{where} must be an object; got {_kind(tool)}", where, "invalid_type")
        if tool.get("type") != "function":
            _fail(f"{where}.type must be 'function'; got {_show(tool.get('type'))}", f"{where}.type", "invalid_value")
        function = tool.get("function")
        if not isinstance(function, dict):
            _fail(f"{where}.function must be an object; got {_kind(function)}", f"{where}.function", "invalid_type")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            _fail(f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-'; got {_show(name)}",
                  f"{where}.function.name", "invalid_value")
        if name in seen:
            _fail(f"{where}.function.name {name!r} is given twice", f"{where}.function.name", "invalid_value")
        seen.add(name)
        entry: dict[str, Any] = {"name": name}
        description = function.get("description")
        if description is not None:
            if not isinstance(description, str):
                _fail(f"{where}.function.description must be a string; got {_show(description)}",
                      f"{where}.function.description", "invalid_type")
            entry["description"] = description
        entry["parameters"] = _parameters(function.get("parameters"), f"{where}.function.parameters")
        strict = function.get("strict")
        if strict is not None and not isinstance(strict, bool):
            _fail(f"{where}.function.strict must be a boolean; got {_show(strict)}", f"{where}.function.strict",
                  "invalid_type")
        functions.append({"type": "function", "function": entry})
    return functions


def _parameters(value: Any, path: str) -> dict[str, Any]:
    """A function's parameters: a JSON Schema of an object (none given: it takes no arguments)."""
    if value is None:
        return {"type": "object", "properties": {}}
    if not isinstance(value, dict):
        _fail(f"{path} must be a JSON Schema object; got {_kind(value)}", path, "invalid_type")
    if value.get("type", "object") != "object":
        _fail(f"{path}.type must be 'object' (arguments are a JSON object); got {_show(value.get('type'))}",
              f"{path}.type", "invalid_value")
    properties = value.get("properties")
    if properties is not None and not isinstance(properties, dict):
        _fail(f"{path}.properties must be an object; got {_kind(properties)}", f"{path}.properties", "invalid_type")
    required = value.get("required")
    if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        _fail(f"{path}.required must be an array of strings; got {_show(required)}", f"{path}.required",
              "invalid_type")
    _nesting(value, path)
    return value


def _choice(value: Any, names: tuple[str, ...]) -> str:
    if value is None:
        return "auto" if names else "none"
    if not names:
        if value in ("none", "auto"):
            return "none"  # nothing to call either way
        _fail("tool_choice is only allowed when tools are given", "tool_choice", "invalid_value")
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            _fail(f"tool_choice must be 'none', 'auto', 'required' or a function object; got {_show(value)}",
                  "tool_choice", "invalid_value")
        return value
    if not isinstance(value, dict):
        _fail(f"tool_choice must be a string or an object; got {_kind(value)}", "tool_choice", "invalid_type")
    if value.get("type") != "function":
        _fail(f"tool_choice.type must be 'function'; got {_show(value.get('type'))}", "tool_choice.type",
              "invalid_value")
    function = value.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        _fail(f"tool_choice.function.name must be a string; got {_show(name)}", "tool_choice.function.name",
              "invalid_type")
    if name not in names:
        _fail(f"tool_choice names function {name!r}, which is not in tools ({', '.join(names)})",
              "tool_choice.function.name", "invalid_value")
    return name


def _response_format(value: Any) -> Guide | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        _fail(f"response_format must be an object; got {_kind(value)}", "response_format", "invalid_type")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Guide("json", _canonical({"type": "object"}))
    if kind != "json_schema":
        _fail(f"response_format.type must be 'text', 'json_object' or 'json_schema'; got {_show(kind)}",
              "response_format.type", "invalid_value")
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        _fail(f"response_format.json_schema must be an object; got {_kind(spec)}", "response_format.json_schema",
              "missing_required_parameter" if spec is None else "invalid_type")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        _fail(f"response_format.json_schema.name must be 1 to 64 letters, digits, '_' or '-'; got {_show(name)}",
              "response_format.json_schema.name", "invalid_value")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        _fail(f"response_format.json_schema.strict must be a boolean; got {_show(strict)}",
              "response_format.json_schema.strict", "invalid_type")
    schema = spec.get("schema")
    if schema is None:
        schema = {}  # OpenAI: no schema is any JSON
    if not isinstance(schema, dict):
        _fail(f"response_format.json_schema.schema must be a JSON Schema object; got {_kind(schema)}",
              "response_format.json_schema.schema", "invalid_type")
    _nesting(schema, "response_format.json_schema.schema")
    return Guide("json", _canonical(schema))


def _call_schema(functions: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON of one call of one of `functions`: {"name": ..., "arguments": {...}}."""
    options = [{"type": "object", "properties": {"name": {"const": f["function"]["name"]},
                                                 "arguments": f["function"]["parameters"]},
                "required": ["name", "arguments"], "additionalProperties": False} for f in functions]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _canonical(value: Any) -> str:
    """Compact JSON in the client's key order: a schema's properties are generated in their order,
    and tools are shown to the model as given. (json, not orjson: a schema may hold integers beyond
    64 bits, which orjson cannot write.)"""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _nesting(value: Any, path: str) -> None:
    """A 400 for a schema nested deeper than MAX_SCHEMA_NESTING (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_SCHEMA_NESTING:
            _fail(f"{path} is nested too deeply: objects and arrays may nest at most {MAX_SCHEMA_NESTING} levels",
                  path, "invalid_value")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))



"""A chat request as the arguments of the tokenizer's `apply_chat_template`, tools included.

Both engines render chat with the model's own template (HF tokenizers, vLLM's included). Tools:
- a template that knows tools (it mentions `tools`, as Qwen's, Hermes' and Llama 3's do) gets them as
  `tools=`, assistant messages' calls as `tool_calls` (arguments as objects, as HF templates expect)
  and tool messages' `tool_call_id`: the model sees them exactly as it was trained to;
- a template that does not (SmolLM2's, most small models') would drop them silently, so the
  functions are described in the system message instead, in the Hermes/Qwen 2.5 wording, which asks
  for calls as `<tool_call>{"name": ..., "arguments": ...}</tool_call>`; earlier calls are written
  into their assistant message the same way. That is also the format the gateway parses and that a
  forced call is constrained to (`engines/guided.py`), whatever the template.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from cynode.inference import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ChatMessage, ToolCall

__all__ = ["chat_template_args", "template_knows_tools"]

_TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n")
_TOOLS_CLOSING = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call>")


def template_knows_tools(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates
        template = template.get("tool_use") or template.get("default")
    return isinstance(template, str) and "tools" in template


def chat_template_args(messages: Sequence[ChatMessage], tools: str, native: bool) -> tuple[list, dict[str, Any]]:
    """The conversation and the keyword arguments (`tools`, for a template that knows them) for
    `apply_chat_template(conversation, **kwargs)`. `tools` is OpenAI's `tools` as JSON text ("" for
    none); `native`: `template_knows_tools`."""
    functions = json.loads(tools) if tools else []
    conversation = [_message(m, native) for m in messages]
    if not functions:
        return conversation, {}
    if native:
        return conversation, {"tools": functions}
    described = _TOOLS_PREAMBLE + "\n".join(json.dumps(f, ensure_ascii=False) for f in functions) + _TOOLS_CLOSING
    if conversation and conversation[0]["role"] == "system":
        conversation[0] = {**conversation[0], "content": conversation[0]["content"] + "\n\n" + described}
    else:
        conversation.insert(0, {"role": "system", "content": described})
    return conversation, {}


def _message(m: ChatMessage, native: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        if native:
            out["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": _arguments(c)}} for c in m.tool_calls]
        else:
            calls = "\n".join(TOOL_CALL_OPEN + json.dumps({"name": c.name, "arguments": _arguments(c)},
                                                          ensure_ascii=False, separators=(",", ":")) + TOOL_CALL_CLOSE
                              for c in m.tool_calls)
            out["content"] = f"{m.content}\n{calls}" if m.content else calls
    if m.tool_call_id and native:
        out["tool_call_id"] = m.tool_call_id
    return out


def _arguments(call: ToolCall) -> Any:
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments  # not JSON: shown as the client sent it

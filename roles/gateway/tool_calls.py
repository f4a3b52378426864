"""Tool calls read out of a model's answer, whole or as it streams.

Models write calls in the Hermes/Qwen format the engines ask for (`cynode.engines.chat_prompt`) and
constrain forced calls to (`cynode.engines.guided`): `<tool_call>{"name": ..., "arguments": {...}}
</tool_call>`, any number of them, with or without text around. A block whose JSON is not an object
with a known function `name` and an object of `arguments` is not a call: it stays in the content,
as the model wrote it, so nothing the model said is lost.

`ToolCallParser` is incremental: fed the answer's pieces as they come, it gives back content that is
surely not part of a call at once, holds what may be the start of a `<tool_call>` tag, and gives
each call when its block closes. The same parser reads a whole answer (`parse_answer`), so a
streamed and a non-streamed answer always agree.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from cynode.inference import ToolCall

__all__ = ["ParsedAnswer", "ToolCallParser", "parse_answer"]

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


def call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class ParsedAnswer:
    content: str | None
    calls: list[ToolCall] = field(default_factory=list)


class ToolCallParser:
    """Feed pieces with `feed`, then `finish`; each returns (content, calls) ready to send."""

    def __init__(self, names: tuple[str, ...], *, parallel: bool = True) -> None:
        self._names = frozenset(names)
        self._parallel = parallel
        self._buffer = ""
        self._in_call = False
        self._held = ""  # whitespace not sent yet: it may only separate calls
        self.calls: list[ToolCall] = []

    def feed(self, piece: str) -> tuple[str, list[ToolCall]]:
        self._buffer += piece
        content, calls = [], []
        while True:
            if self._in_call:
                end = self._buffer.find(CLOSE)
                if end < 0:
                    break
                block, self._buffer = self._buffer[:end], self._buffer[end + len(CLOSE):]
                self._in_call = False
                self._block(block, content, calls, closed=True)
                continue
            start = self._buffer.find(OPEN)
            if start >= 0:
                content.append(self._buffer[:start])
                self._buffer = self._buffer[start + len(OPEN):]
                self._in_call = True
                continue
            keep = _partial_tag(self._buffer)
            content.append(self._buffer[:len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep:]
            break
        return self._release("".join(content)), calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The rest: an unclosed block (the answer was cut) is a call if its JSON is complete."""
        content, calls = [], []
        if self._in_call:
            self._in_call = False
            self._block(self._buffer, content, calls, closed=False)
        else:
            content.append(self._buffer)
        self._buffer = ""
        text = self._release("".join(content))
        if not self.calls and self._held:  # no call after all: the whitespace was content
            text, self._held = text + self._held, ""
        return text, calls

    def _block(self, block: str, content: list[str], calls: list[ToolCall], *, closed: bool) -> None:
        call = self._call(block)
        if call is None:
            content.append(OPEN + block + (CLOSE if closed else ""))
        elif self._parallel or not self.calls:
            self.calls.append(call)
            calls.append(call)
        # else: parallel_tool_calls is false and there is a call already; the others are dropped

    def _call(self, block: str) -> ToolCall | None:
        try:
            data = json.loads(block)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("name") not in self._names:
            return None
        arguments = data.get("arguments", data.get("parameters", {}))
        if not isinstance(arguments, dict):
            return None
        return ToolCall(call_id(), data["name"], json.dumps(arguments, ensure_ascii=False))

    def _release(self, text: str) -> str:
        """Whitespace-only text is held (it may sit between calls); it goes out with the next real text."""
        if not text:
            return ""
        if not text.strip():
            self._held += text
            return ""
        text, self._held = self._held + text, ""
        return text


def _partial_tag(text: str) -> int:
    """How many trailing characters of `text` could start a `<tool_call>` tag."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-n:]):
            return n
    return 0


def parse_answer(text: str, names: tuple[str, ...], *, parallel: bool = True) -> ParsedAnswer:
    """A whole answer: its content (None when it is only calls) and its calls."""
    parser = ToolCallParser(names, parallel=parallel)
    head, calls = parser.feed(text)
    tail, more = parser.finish()
    content = (head + tail).strip() if calls or more else head + tail
    return ParsedAnswer(content=content or (None if calls or more else ""), calls=calls + more)

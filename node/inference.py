"""The domain types of one inference request that every role shares: chat messages, tool calls, usage.

Sampling parameters have their own module (`cynode.sampling`); `cynode.rpc.convert` is the one
place these cross to and from protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TOOL_CALL_CLOSE", "TOOL_CALL_OPEN", "ChatMessage", "TokenLogprob", "ToolCall", "TopLogprob", "Usage"]

# How a model writes a tool call (the Hermes/Qwen format): the engines ask for it and constrain
# forced calls to it, the gateway parses it. `{"name": ..., "arguments": {...}}` goes between.
TOOL_CALL_OPEN = "<tool_call>\n"
TOOL_CALL_CLOSE = "\n</tool_call>"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call an assistant made (OpenAI's `tool_calls[i]`); `arguments` is JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str
    # An assistant message's calls, and (role "tool") the call a tool message answers.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """One likely token at a position: its text, log probability and UTF-8 bytes (a token may hold
    part of a character, so the bytes say more than the text)."""

    token: str
    logprob: float
    bytes: bytes = b""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token's log probability, and the most likely tokens at its position."""

    token: str
    logprob: float
    bytes: bytes = b""
    top: tuple[TopLogprob, ...] = ()

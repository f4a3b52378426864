"""The one place domain types cross to and from protobuf: sampling (its guide too), messages (their
tool calls too), usage.

Every service and client converts here, so a field added to `SamplingParams` and to the proto's
`SamplingParams` flows through the gateway, the coordinator and the worker with no other edit.
Unset optional proto fields map to `None` ("not given") and back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cynode.inference import ChatMessage, TokenLogprob, ToolCall, TopLogprob, Usage
from cynode.sampling import RULES, Guide, SamplingParams

from . import common_pb2

__all__ = ["logprobs_from_pb", "logprobs_to_pb", "messages_from_pb", "messages_to_pb", "sampling_from_pb",
           "sampling_to_pb", "usage_from_pb", "usage_to_pb"]

_SCALARS = tuple(RULES)


def sampling_to_pb(sampling: SamplingParams, *, max_tokens: int | None = None) -> common_pb2.SamplingParams:
    """`max_tokens`, when given, replaces the request's (a migrated request asks for what is left)."""
    pb = common_pb2.SamplingParams(stop=sampling.stop)
    for name in _SCALARS:
        value = getattr(sampling, name)
        if value is not None:
            setattr(pb, name, value)
    if max_tokens is not None:
        pb.max_tokens = max_tokens
    if sampling.logprobs is not None:
        pb.logprobs = sampling.logprobs
    if sampling.guide is not None:
        pb.guide.kind, pb.guide.schema = sampling.guide.kind, sampling.guide.schema
    return pb


def sampling_from_pb(pb: common_pb2.SamplingParams) -> SamplingParams:
    values = {name: getattr(pb, name) for name in _SCALARS if pb.HasField(name)}
    guide = Guide(pb.guide.kind, pb.guide.schema) if pb.HasField("guide") else None
    return SamplingParams(stop=tuple(pb.stop), logprobs=pb.logprobs if pb.HasField("logprobs") else None,
                          guide=guide, **values)


def messages_to_pb(messages: Iterable[ChatMessage]) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role=m.role, content=m.content, tool_call_id=m.tool_call_id,
                                   tool_calls=[common_pb2.ToolCall(id=c.id, name=c.name, arguments=c.arguments)
                                               for c in m.tool_calls])
            for m in messages]


def messages_from_pb(pbs: Sequence[common_pb2.ChatMessage]) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(m.role, m.content, tuple(ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls),
                             m.tool_call_id) for m in pbs)


def usage_to_pb(usage: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)


def usage_from_pb(pb: common_pb2.Usage) -> Usage:
    return Usage(pb.prompt_tokens, pb.completion_tokens)


def logprobs_to_pb(entries: Iterable[TokenLogprob]) -> list[common_pb2.TokenLogprob]:
    return [common_pb2.TokenLogprob(token=e.token, logprob=e.logprob, bytes=e.bytes,
                                    top=[common_pb2.TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes)
                                         for t in e.top])
            for e in entries]


def logprobs_from_pb(pbs: Sequence[common_pb2.TokenLogprob]) -> list[TokenLogprob]:
    return [TokenLogprob(p.token, p.logprob, p.bytes, tuple(TopLogprob(t.token, t.logprob, t.bytes) for t in p.top))
            for p in pbs]

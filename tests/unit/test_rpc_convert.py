"""The one proto boundary (cynode.rpc.convert): sampling with its guide and messages with their tool
calls cross it and come back equal; what was not given stays not given."""

from __future__ import annotations

from cynode.inference import ChatMessage, ToolCall
from cynode.rpc import common_pb2
from cynode.rpc.convert import messages_from_pb, messages_to_pb, sampling_from_pb, sampling_to_pb
from cynode.sampling import Guide, SamplingParams


def roundtrip_sampling(s: SamplingParams) -> SamplingParams:
    wire = common_pb2.SamplingParams.FromString(sampling_to_pb(s).SerializeToString())
    return sampling_from_pb(wire)


def test_a_guide_crosses_the_wire_and_comes_back_equal():
    s = SamplingParams(temperature=0.0, max_tokens=9, guide=Guide("tool_call", '{"type":"object"}'))
    assert roundtrip_sampling(s) == s


def test_no_guide_stays_no_guide():
    assert roundtrip_sampling(SamplingParams(temperature=0.5)).guide is None


def test_messages_keep_their_tool_calls_and_the_answered_call_id():
    messages = (ChatMessage("user", "Weather?"),
                ChatMessage("assistant", "", (ToolCall("c1", "get_weather", '{"city":"Paris"}'),)),
                ChatMessage("tool", "sunny", tool_call_id="c1"))
    wire = [common_pb2.ChatMessage.FromString(m.SerializeToString()) for m in messages_to_pb(messages)]
    assert messages_from_pb(wire) == messages

"""`tools`, `tool_choice`, `parallel_tool_calls` and `response_format` in chat bodies: what each asks
of the engines, and a 400 naming the exact field for every bad value."""

from __future__ import annotations

import json

import orjson
import pytest

from cynode.errors import RequestError
from cynode.roles.gateway.openai_schema import parse_chat_request

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Local time"}}]


def body(**fields) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})


def refused(**fields) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_chat_request(body(**fields))
    assert caught.value.status == 400
    return caught.value


def test_json_object_asks_for_any_json_object():
    guide = parse_chat_request(body(response_format={"type": "json_object"})).sampling.guide
    assert guide.kind == "json" and json.loads(guide.schema) == {"type": "object"}


def test_json_schema_asks_for_that_schema_with_its_properties_in_the_clients_order():
    schema = {"type": "object", "required": ["name", "age"],
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    guide = parse_chat_request(body(response_format={"type": "json_schema", "json_schema": {
        "name": "thing", "schema": schema, "strict": True}})).sampling.guide
    assert guide.kind == "json" and json.loads(guide.schema) == schema
    assert list(json.loads(guide.schema)["properties"]) == ["name", "age"]  # generated in this order


def test_text_response_format_asks_for_nothing():
    assert parse_chat_request(body(response_format={"type": "text"})).sampling.guide is None


def test_tools_with_auto_choice_are_rendered_and_parsed_but_not_forced():
    request = parse_chat_request(body(tools=TOOLS))
    assert request.tooling.choice == "auto" and request.tooling.parses_calls
    assert request.tooling.names == ("get_weather", "get_time") and request.sampling.guide is None
    functions = json.loads(request.tooling.tools)
    assert functions[1]["function"]["parameters"] == {"type": "object", "properties": {}}


def test_tool_choice_none_leaves_the_tools_out():
    request = parse_chat_request(body(tools=TOOLS, tool_choice="none"))
    assert not request.tooling.parses_calls and request.tooling.tools == "" and request.sampling.guide is None


def test_required_forces_a_call_of_any_tool_and_a_named_choice_of_that_one():
    required = parse_chat_request(body(tools=TOOLS, tool_choice="required")).sampling.guide
    assert required.kind == "tool_call"
    assert [o["properties"]["name"]["const"] for o in json.loads(required.schema)["anyOf"]] == ["get_weather", "get_time"]
    named = parse_chat_request(body(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    schema = json.loads(named.sampling.guide.schema)
    assert schema["properties"] == {"name": {"const": "get_weather"}, "arguments": WEATHER}


def test_assistant_tool_calls_and_tool_messages_are_accepted():
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    request = parse_chat_request(body(messages=messages, tools=TOOLS))
    assert request.messages[1].content == "" and request.messages[1].tool_calls[0].name == "get_weather"
    assert request.messages[2].tool_call_id == "call_1"


@pytest.mark.parametrize("fields, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "an object"}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema.name"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": "json"}, "response_format"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch"}}}, "tool_choice.function.name"),
    ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters.type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": []}}}]},
     "tools[0].function.parameters.properties"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": {"a": 1}}, "tools"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
])
def test_bad_tool_and_format_fields_are_refused_naming_the_field(fields, param):
    assert refused(**fields).param == param


def test_a_schema_nested_deeper_than_the_grammar_limit_is_refused():
    deep: dict = {"type": "string"}
    for _ in range(70):
        deep = {"type": "object", "properties": {"a": deep}}
    error = refused(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": deep}})
    assert error.param == "response_format.json_schema.schema" and "nested too deeply" in error.message
    assert refused(tools=[{"type": "function", "function": {"name": "f", "parameters": deep}}]).param == \
        "tools[0].function.parameters"


def test_integers_beyond_64_bits_in_a_schema_are_kept_exactly():
    schema = {"type": "integer", "maximum": 2**70}
    raw = ('{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema",'
           '"json_schema":{"name":"x","schema":' + json.dumps(schema) + '}}}').encode()
    assert json.loads(parse_chat_request(raw).sampling.guide.schema) == schema


def test_fuzzed_values_in_every_tool_and_format_field_get_400s_never_a_crash():
    import random

    rng = random.Random(9)
    values = [None, True, -1, 2**70, 1e308, "", "x" * 300, [], {}, [[[[[]]]]], {"type": "function"},
              {"type": "function", "function": {"name": "f", "parameters": {"type": ["object"]}}},
              {"type": "json_schema", "json_schema": {"name": "n", "schema": {"$ref": 3}}},
              [{"type": "function", "function": {"name": "f", "parameters": {"required": [1]}}}],
              {"type": "function", "function": {"name": {}}}, [{"id": 1, "function": []}]]
    for _ in range(3000):
        fields = {name: rng.choice(values) for name in rng.sample(
            ["tools", "tool_choice", "response_format", "parallel_tool_calls"], rng.randrange(1, 4))}
        message = rng.choice([{"role": "user", "content": "hi"},
                              {"role": "assistant", "content": rng.choice(values), "tool_calls": rng.choice(values)},
                              {"role": "tool", "content": "r", "tool_call_id": rng.choice(values)}])
        try:
            parse_chat_request(json.dumps({"model": "m", "messages": [message], **fields}).encode())
        except RequestError as exc:
            assert exc.status == 400 and exc.param

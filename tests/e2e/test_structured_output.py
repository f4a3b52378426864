"""Structured output and tool calls with the official `openai` client (sync and async, whole and
streamed) on the real SmolLM2 model through a real daemon (transformers engine): JSON valid against
the requested schema, forced tool calls that parse into valid calls, conversations carrying calls
and their results, the prompt cache keyed on the format, and 400s naming the bad field."""

from __future__ import annotations

import asyncio
import json
import uuid

import jsonschema
import openai
import pydantic
import pytest

pytestmark = pytest.mark.timeout(900)

MODEL = "smollm2-135m-instruct"
ENGINE = {"Cache-Control": "no-cache"}  # the engine must answer, not the prompt cache
CITY = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"], "additionalProperties": False}
CITY_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}
ASK_CITY = [{"role": "user", "content": "Name the capital of France and its population, as JSON."}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
]
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(node):
    return openai.OpenAI(base_url=f"{node.base_url}/v1", api_key=node.api_key(), max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def async_client(node):
    return openai.AsyncOpenAI(base_url=f"{node.base_url}/v1", api_key=node.api_key(), max_retries=0, timeout=600)


def engine_answer(raw):
    assert raw.headers["X-Cache"] == "miss"
    return raw.parse()


# response_format -------------------------------------------------------------------------------

def test_a_json_schema_request_gets_json_that_validates_against_the_schema(client):
    completion = engine_answer(client.chat.completions.with_raw_response.create(
        model=MODEL, messages=ASK_CITY, response_format=CITY_FORMAT, temperature=0, max_tokens=80,
        extra_headers=ENGINE))
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), CITY)


def test_the_clients_parse_helper_gets_its_pydantic_model_back(client):
    class City(pydantic.BaseModel):
        city: str
        population: int

    completion = client.chat.completions.parse(model=MODEL, messages=ASK_CITY, response_format=City, temperature=0,
                                               max_tokens=80, extra_headers=ENGINE)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, City) and parsed.city


def test_sampled_answers_keep_to_the_schema(client):
    for seed in (7, 8):
        completion = client.chat.completions.create(model=MODEL, messages=ASK_CITY, response_format=CITY_FORMAT,
                                                    temperature=1.0, seed=seed, max_tokens=80, extra_headers=ENGINE)
        jsonschema.validate(json.loads(completion.choices[0].message.content), CITY)


async def test_a_streamed_json_schema_answer_joins_into_valid_json(async_client):
    stream = await async_client.chat.completions.create(
        model=MODEL, messages=ASK_CITY, response_format=CITY_FORMAT, temperature=0, max_tokens=80, stream=True,
        extra_headers=ENGINE)
    pieces, finish = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert finish == "stop" and len([p for p in pieces if p]) > 1  # really streamed, piece by piece
    jsonschema.validate(json.loads("".join(pieces)), CITY)


async def test_json_object_returns_a_parseable_json_object(async_client):
    completion = await async_client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=120, response_format={"type": "json_object"}, extra_headers=ENGINE,
        messages=[{"role": "system", "content": "You answer in JSON."},
                  {"role": "user", "content": "Give a JSON object with the key 'answer' saying hello."}])
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(json.loads(choice.message.content), dict)


def test_the_prompt_cache_tells_answers_of_different_formats_apart(client):
    messages = [{"role": "user", "content": f"Describe a city as JSON ({uuid.uuid4().hex[:6]})."}]
    first = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, temperature=0,
                                                             max_tokens=60, response_format=CITY_FORMAT)
    again = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, temperature=0,
                                                             max_tokens=60, response_format=CITY_FORMAT)
    other = {"type": "json_schema", "json_schema": {"name": "name_only", "schema": {
        "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
        "additionalProperties": False}}}
    different = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, temperature=0,
                                                                 max_tokens=200, response_format=other)
    plain = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, temperature=0,
                                                             max_tokens=60)
    assert first.headers["X-Cache"] == "miss" and again.headers["X-Cache"] == "hit"
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert different.headers["X-Cache"] == "miss" and plain.headers["X-Cache"] == "miss"
    # The answer follows the other schema. (Greedy, the 135M model may write a name longer than any
    # token limit; the grammar admits that, so only a finished answer is parsed.)
    answer = different.parse().choices[0]
    assert answer.message.content.replace(" ", "").startswith('{"name":"')
    if answer.finish_reason == "stop":
        assert set(json.loads(answer.message.content)) == {"name"}


# tools -----------------------------------------------------------------------------------------

def valid_call(call, name: str) -> dict:
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == name
    arguments = json.loads(call.function.arguments)
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)
    jsonschema.validate(arguments, schema)
    return arguments


def test_tool_choice_required_gets_a_valid_call_of_an_offered_function(client):
    completion = engine_answer(client.chat.completions.with_raw_response.create(
        model=MODEL, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=80,
        extra_headers=ENGINE))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name in ("get_weather", "get_time")
    valid_call(call, call.function.name)


def test_a_named_tool_choice_calls_that_function(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0, max_tokens=80, extra_headers=ENGINE)
    [call] = completion.choices[0].message.tool_calls
    assert "city" in valid_call(call, "get_time")


async def test_a_streamed_forced_call_arrives_as_delta_tool_calls(async_client):
    stream = await async_client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0, max_tokens=80, stream=True, extra_headers=ENGINE)
    calls: dict[int, dict] = {}
    content, finish = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            for part in choice.delta.tool_calls or []:
                entry = calls.setdefault(part.index, {"id": part.id, "name": "", "arguments": ""})
                entry["name"] += part.function.name or ""
                entry["arguments"] += part.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and "".join(content) == ""
    assert list(calls) == [0] and calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER)


def test_the_clients_stream_helper_assembles_the_streamed_call(client):
    with client.chat.completions.stream(model=MODEL, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required",
                                        temperature=0, max_tokens=80, extra_headers=ENGINE) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    valid_call(call, call.function.name)


def test_a_conversation_with_a_call_and_its_result_gets_an_answer(client):
    first = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required",
                                           temperature=0, max_tokens=80, extra_headers=ENGINE)
    call = first.choices[0].message.tool_calls[0]
    follow_up = [*ASK_WEATHER, first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18 degrees celsius and sunny"}]
    completion = engine_answer(client.chat.completions.with_raw_response.create(
        model=MODEL, messages=follow_up, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=40,
        extra_headers=ENGINE))
    message = completion.choices[0].message
    assert message.content and not message.tool_calls and completion.choices[0].finish_reason in ("stop", "length")
    # The call and its result are in the prompt the model read: it is longer than the question alone.
    alone = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, temperature=0, max_tokens=1,
                                           extra_headers=ENGINE)
    assert completion.usage.prompt_tokens > alone.usage.prompt_tokens + 20


# An earlier call and its result in the conversation: the model, left to choose (auto), calls again.
FEW_SHOT = [
    {"role": "user", "content": "What is the weather in Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_rome", "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": "Rome", "unit": "celsius"})}}]},
    {"role": "tool", "tool_call_id": "call_rome", "content": "20 degrees"},
    {"role": "assistant", "content": "It is 20 degrees in Rome."},
    {"role": "user", "content": "What is the weather in Paris?"},
]


def test_with_auto_a_call_the_model_chooses_to_write_is_parsed_into_tool_calls(client):
    completion = engine_answer(client.chat.completions.with_raw_response.create(
        model=MODEL, messages=FEW_SHOT, tools=TOOLS[:1], temperature=0, max_tokens=60, extra_headers=ENGINE))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert valid_call(call, "get_weather")["city"] == "Paris"


async def test_with_auto_a_streamed_call_never_shows_its_raw_block(async_client):
    stream = await async_client.chat.completions.create(
        model=MODEL, messages=FEW_SHOT, tools=TOOLS[:1], temperature=0, max_tokens=60, stream=True,
        extra_headers=ENGINE)
    content, names, finish = [], [], None
    async for chunk in stream:
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            names += [part.function.name for part in choice.delta.tool_calls or []]
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and names == ["get_weather"] and "".join(content) == ""


# bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "an object"}}},
     "response_format.json_schema.schema"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch_rocket"}}},
     "tool_choice.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "not a schema"}}]},
     "tools[0].function.parameters"),
    # Valid JSON, but no grammar can hold it: the worker's compiler says so, as a 400 too.
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "(unclosed"}}, "required": ["a"]}}}},
     "response_format"),
])
def test_bad_formats_and_tools_get_an_openai_shaped_400_naming_the_field(client, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, max_tokens=8, extra_headers=ENGINE,
                                       **fields)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == param and error["message"]
    assert error["type"] == "invalid_request_error"


async def test_both_clients_agree_on_a_greedy_forced_call(client, async_client):
    kwargs = dict(model=MODEL, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required", temperature=0,
                  max_tokens=80, extra_headers=ENGINE)
    sync_call = (await asyncio.to_thread(client.chat.completions.create, **kwargs)).choices[0].message.tool_calls[0]
    async_call = (await async_client.chat.completions.create(**kwargs)).choices[0].message.tool_calls[0]
    assert (sync_call.function.name, sync_call.function.arguments) == (async_call.function.name,
                                                                       async_call.function.arguments)

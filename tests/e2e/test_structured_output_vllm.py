"""Structured output and forced tool calls through a whole node on the `cpu-vllm` backend, with the
official `openai` client and the real SmolLM2 model: the same grammars as the transformers engine,
through vLLM's structured outputs. Few tests: vLLM takes a minute or two to start here."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from daemon_harness import CynodeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

MODEL = "smollm2-135m-instruct"
ENGINE = {"Cache-Control": "no-cache"}
CITY = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER}}]


@pytest.fixture(scope="module")
def vllm_node(tmp_path_factory, redis_server, builtin_model_dir, models_dir):
    workdir = tmp_path_factory.mktemp("vllm-node")
    registry = workdir / "models.json"
    registry.write_text(json.dumps({"models": [{"id": MODEL, "source": "builtin", "engine": "vllm",
                                                "dtype": "float32", "context_length": 2048}]}))
    node = CynodeProcess(workdir / "node", redis_url=redis_server.url, models_dir=models_dir, extra={
        "worker": {"backend": "cpu-vllm", "model_registry": str(registry), "max_concurrency": 4}}).start(900)
    yield node
    assert node.terminate() == 0, node.log()


@pytest.fixture(scope="module")
def client(vllm_node):
    # The first request waits for vLLM to load the model.
    return openai.OpenAI(base_url=f"{vllm_node.base_url}/v1", api_key=vllm_node.api_key(), max_retries=0,
                         timeout=900)


def test_vllm_json_schema_answers_validate_whole_and_streamed(client):
    kwargs = dict(model=MODEL, temperature=0, max_tokens=80, extra_headers=ENGINE,
                  messages=[{"role": "user", "content": "Name the capital of France and its population, as JSON."}],
                  response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}})
    raw = client.chat.completions.with_raw_response.create(**kwargs)
    assert raw.headers["X-Cache"] == "miss"
    whole = raw.parse().choices[0].message.content
    jsonschema.validate(json.loads(whole), CITY)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        **kwargs, stream=True) if chunk.choices)
    assert streamed == whole  # greedy: the same grammar-constrained answer either way


def test_vllm_forced_tool_call_parses_into_a_valid_call(client):
    completion = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=80, extra_headers=ENGINE, tools=TOOLS, tool_choice="required",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)


def test_vllm_json_object_returns_a_json_object(client):
    completion = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=120, extra_headers=ENGINE, response_format={"type": "json_object"},
        messages=[{"role": "system", "content": "You answer in JSON."},
                  {"role": "user", "content": "Give a JSON object with the key 'answer' saying hello."}])
    assert isinstance(json.loads(completion.choices[0].message.content), dict)

"""Constrained decoding on the vLLM engine (CPU wheel) with the real SmolLM2 model: the same guides
(cynode.engines.guided) as the transformers engine, through vLLM's structured outputs."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import jsonschema
import pytest
import pytest_asyncio

from cynode.engines import BUILTIN_MODEL_ID, ChatMessage, GenerationRequest, SamplingParams
from cynode.engines.vllm_engine import VllmEngine
from cynode.errors import RequestError
from cynode.sampling import Guide

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(900)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_ids = itertools.count()

CITY = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}
TOOLS = json.dumps([{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                                      "parameters": WEATHER}}])
CALL = {"type": "object", "properties": {"name": {"const": "get_weather"}, "arguments": WEATHER},
        "required": ["name", "arguments"], "additionalProperties": False}


def chat(text: str, guide: Guide, tools: str = "") -> GenerationRequest:
    return GenerationRequest(request_id=f"vso-{next(_ids)}", model=BUILTIN_MODEL_ID, tools=tools,
                             messages=(ChatMessage("user", text),),
                             sampling=SamplingParams(temperature=0.0, max_tokens=80, guide=guide))


async def answer(engine, request) -> tuple[str, str]:
    deltas = [d async for d in engine.generate(request)]
    return "".join(d.text for d in deltas), deltas[-1].finish_reason


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(builtin_model_dir: Path):
    eng = VllmEngine(builtin_model_dir, BUILTIN_MODEL_ID, max_concurrency=4, kv_cache_gib=1, max_model_len=2048)
    await eng.start()
    yield eng
    await eng.close()


async def test_vllm_answers_json_valid_against_the_requested_schema(engine):
    text, finish = await answer(engine, chat("Name the capital of France and its population, as JSON.",
                                             Guide("json", json.dumps(CITY))))
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), CITY)


async def test_vllm_forced_tool_call_is_one_valid_call_block(engine):
    text, finish = await answer(engine, chat("What is the weather in Paris?", Guide("tool_call", json.dumps(CALL)),
                                             tools=TOOLS))
    assert finish == "stop", text
    assert text.startswith("<tool_call>\n") and text.endswith("\n</tool_call>"), text
    jsonschema.validate(json.loads(text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>")), CALL)


async def test_vllm_refuses_a_schema_no_grammar_can_hold_naming_response_format(engine):
    bad = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(unclosed"}}, "required": ["a"]}
    with pytest.raises(RequestError) as caught:
        await answer(engine, chat("Anything.", Guide("json", json.dumps(bad))))
    assert caught.value.status == 400 and caught.value.param == "response_format"

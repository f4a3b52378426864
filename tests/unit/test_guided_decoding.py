"""Constrained decoding and tool prompts on the transformers engine, with the real SmolLM2-135M-Instruct:
the grammar (cynode.engines.guided) masks every step, greedy or sampled, alone or in a batch."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import jsonschema
import pytest
import pytest_asyncio

from cynode.engines import BUILTIN_MODEL_ID, ChatMessage, GenerationRequest, SamplingParams
from cynode.engines.chat_prompt import chat_template_args, template_knows_tools
from cynode.engines.transformers_engine import TransformersEngine
from cynode.errors import RequestError
from cynode.inference import ToolCall
from cynode.sampling import Guide

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(600)]
_ids = itertools.count()

CITY = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}
TOOLS = json.dumps([{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                                      "parameters": WEATHER}}])
CALL = {"type": "object", "properties": {"name": {"const": "get_weather"}, "arguments": WEATHER},
        "required": ["name", "arguments"], "additionalProperties": False}
QUESTION = "Name the capital of France and its population, as JSON."


def chat(text: str, guide: Guide | None = None, *, tools: str = "", continuation: str = "",
         **sampling) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    sampling.setdefault("max_tokens", 80)
    return GenerationRequest(request_id=f"gd-{next(_ids)}", model=BUILTIN_MODEL_ID, tools=tools,
                             messages=(ChatMessage("user", text),), continuation=continuation,
                             sampling=SamplingParams(guide=guide, **sampling))


async def answer(engine, request) -> tuple[str, str]:
    deltas = [d async for d in engine.generate(request)]
    return "".join(d.text for d in deltas), deltas[-1].finish_reason


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(builtin_model_dir: Path):
    eng = TransformersEngine(builtin_model_dir, BUILTIN_MODEL_ID, max_concurrency=4)
    await eng.start()
    yield eng
    await eng.close()


@pytest.fixture(scope="module")
def tokenizer(builtin_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_model_dir, local_files_only=True)


async def test_a_json_schema_guide_gives_json_valid_against_it(engine):
    text, finish = await answer(engine, chat(QUESTION, Guide("json", json.dumps(CITY))))
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), CITY)


async def test_sampled_answers_keep_to_the_schema_too(engine):
    for seed in (1, 2, 3):
        text, finish = await answer(engine, chat(QUESTION, Guide("json", json.dumps(CITY)), temperature=1.0, seed=seed))
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), CITY)


async def test_the_same_question_unguided_is_not_that_json(engine):
    """The grammar, not the prompt, makes the JSON: without it the model writes prose."""
    text, _ = await answer(engine, chat(QUESTION))
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        jsonschema.validate(json.loads(text), CITY)


async def test_a_guided_and_a_free_request_in_one_batch_leave_each_other_alone(engine):
    alone, _ = await answer(engine, chat("What is the capital of France?", max_tokens=24))
    (guided, _), (free, _) = await asyncio.gather(
        answer(engine, chat(QUESTION, Guide("json", json.dumps(CITY)))),
        answer(engine, chat("What is the capital of France?", max_tokens=24)))
    assert free == alone
    jsonschema.validate(json.loads(guided), CITY)


async def test_a_tool_call_guide_gives_one_call_block_with_valid_arguments(engine):
    text, finish = await answer(engine, chat("What is the weather in Paris?", Guide("tool_call", json.dumps(CALL)),
                                             tools=TOOLS))
    assert finish == "stop", text
    assert text.startswith("<tool_call>\n") and text.endswith("\n</tool_call>"), text
    jsonschema.validate(json.loads(text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>")), CALL)


async def test_a_migrated_guided_answer_continues_inside_the_grammar(engine):
    head = '{"city":"Par'
    text, finish = await answer(engine, chat(QUESTION, Guide("json", json.dumps(CITY)), continuation=head))
    assert finish == "stop"
    jsonschema.validate(json.loads(head + text), CITY)


async def test_a_schema_no_grammar_can_hold_is_a_400_naming_response_format(engine):
    bad = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(unclosed"}}, "required": ["a"]}
    with pytest.raises(RequestError) as caught:
        await answer(engine, chat("Anything.", Guide("json", json.dumps(bad))))
    assert caught.value.status == 400 and caught.value.param == "response_format"


# tool prompts ----------------------------------------------------------------------------------

async def test_smollm2s_template_knows_no_tools_so_they_go_into_the_system_message(tokenizer):
    assert not template_knows_tools(tokenizer)
    conversation, kwargs = chat_template_args((ChatMessage("user", "Weather in Paris?"),), TOOLS, native=False)
    prompt = tokenizer.apply_chat_template(conversation, **kwargs, add_generation_prompt=True, tokenize=False)
    assert kwargs == {}
    assert prompt.startswith("<|im_start|>system\n# Tools") and '"name": "get_weather"' in prompt
    assert "<tool_call>" in prompt and prompt.endswith("<|im_start|>assistant\n")


async def test_earlier_calls_and_tool_answers_are_rendered_in_the_conversation(tokenizer):
    messages = (ChatMessage("system", "Be brief."), ChatMessage("user", "Weather in Paris?"),
                ChatMessage("assistant", "", (ToolCall("call_1", "get_weather", '{"city":"Paris","unit":"celsius"}'),)),
                ChatMessage("tool", "18 degrees, sunny", tool_call_id="call_1"))
    conversation, kwargs = chat_template_args(messages, TOOLS, native=False)
    prompt = tokenizer.apply_chat_template(conversation, **kwargs, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert ('<|im_start|>assistant\n<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris","unit":"celsius"}}'
            '\n</tool_call><|im_end|>') in prompt
    assert "<|im_start|>tool\n18 degrees, sunny<|im_end|>" in prompt


async def test_a_template_that_knows_tools_gets_them_natively():
    messages = (ChatMessage("assistant", "", (ToolCall("c1", "get_weather", '{"city":"Paris"}'),)),
                ChatMessage("tool", "sunny", tool_call_id="c1"))
    conversation, kwargs = chat_template_args(messages, TOOLS, native=True)
    assert kwargs["tools"] == json.loads(TOOLS)
    assert conversation[0]["tool_calls"] == [{"id": "c1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert conversation[1]["tool_call_id"] == "c1"

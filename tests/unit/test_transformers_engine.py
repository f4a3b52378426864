"""The transformers engine on the real SmolLM2-135M-Instruct, and the backend factory."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
import pytest_asyncio

from cynode.engines import (
    BUILTIN_ALIASES, BUILTIN_MODEL_ID, ChatMessage, GenerationRequest, Probe, SamplingParams, create_engine,
    select_backend,
)
from cynode.engines.attention import NAME as ATTENTION
from cynode.engines.detokenizer import IncrementalDetokenizer
from cynode.engines.transformers_engine import TransformersEngine
from cynode.errors import EngineError, RequestError

# Every test shares the session loop the engine fixture lives on: a generation thread reports to
# the loop that started it, and a per-test loop closing under it would leak its slot.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

FRANCE = "What is the capital of France?"
_ids = itertools.count()


def chat(text: str, **sampling) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(request_id=f"req-{next(_ids)}", model=BUILTIN_MODEL_ID,
                             messages=(ChatMessage("user", text),), sampling=SamplingParams(**sampling))


async def collect(engine: TransformersEngine, request: GenerationRequest):
    deltas = [d async for d in engine.generate(request)]
    return "".join(d.text for d in deltas), deltas[-1]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(builtin_model_dir: Path):
    eng = TransformersEngine(builtin_model_dir, BUILTIN_MODEL_ID, aliases=BUILTIN_ALIASES, max_concurrency=4)
    await eng.start()
    yield eng
    await eng.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def wide_engine(builtin_model_dir: Path):
    """Room for eight streams in one batch."""
    eng = TransformersEngine(builtin_model_dir, BUILTIN_MODEL_ID, max_concurrency=8)
    await eng.start()
    yield eng
    await eng.close()


@pytest.fixture(scope="module")
def tokenizer(builtin_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_model_dir, local_files_only=True)


async def wait_idle(engine: TransformersEngine, within: float = 5.0) -> float:
    start = time.monotonic()
    while engine.active_requests and time.monotonic() - start < within:
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_greedy_chat_answers_that_paris_is_the_capital_of_france(engine):
    text, last = await collect(engine, chat(FRANCE, max_tokens=32))
    assert "Paris" in text
    assert last.finish_reason == "stop"


async def test_an_alias_of_the_model_is_served_too(engine):
    request = chat(FRANCE, max_tokens=8)
    request = GenerationRequest(request_id="alias", model="HuggingFaceTB/SmolLM2-135M-Instruct",
                                messages=request.messages, sampling=request.sampling)
    text, _ = await collect(engine, request)
    assert text


async def test_max_tokens_ends_the_stream_with_length_after_exactly_that_many_tokens(engine):
    _, last = await collect(engine, chat("Write a long story about a dragon.", max_tokens=5))
    assert last.finish_reason == "length"
    assert last.usage.completion_tokens == 5


async def test_a_stop_string_cuts_the_text_before_it_and_finishes_with_stop(engine):
    full, _ = await collect(engine, chat(FRANCE, max_tokens=32))
    assert "France" in full
    text, last = await collect(engine, chat(FRANCE, max_tokens=32, stop=("France",)))
    assert "France" not in text
    assert text == full[:full.index("France")]
    assert last.finish_reason == "stop"


async def test_usage_counts_the_chat_templated_prompt(engine, tokenizer):
    request = chat(FRANCE, max_tokens=4)
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": FRANCE}], add_generation_prompt=True)
    expected = len(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
    _, last = await collect(engine, request)
    assert last.usage.prompt_tokens == expected
    assert last.usage.total_tokens == expected + last.usage.completion_tokens


async def test_a_raw_prompt_is_completed_without_the_chat_template(engine, tokenizer):
    request = GenerationRequest(request_id="raw", model=BUILTIN_MODEL_ID, prompt="The capital of France is",
                                sampling=SamplingParams(temperature=0.0, max_tokens=4))
    text, last = await collect(engine, request)
    assert text.strip()
    assert last.usage.prompt_tokens == len(tokenizer("The capital of France is")["input_ids"])


async def test_four_concurrent_greedy_requests_each_match_the_single_stream_output(engine):
    prompt = "Name three colours of the rainbow."
    alone, _ = await collect(engine, chat(prompt, max_tokens=24))
    together = await asyncio.gather(*(collect(engine, chat(prompt, max_tokens=24)) for _ in range(4)))
    assert [text for text, _ in together] == [alone] * 4


EIGHT_PROMPTS = (
    FRANCE, "Name three colours of the rainbow.", "Write a long story about a dragon.", "Tell me a joke.",
    "Explain photosynthesis in one paragraph.", "What is 2+2?", "List five animals that live in the sea.",
    "Why is the sky blue?",
)


async def test_eight_concurrent_greedy_streams_each_equal_their_single_stream_output(wide_engine):
    alone = [(await collect(wide_engine, chat(p, max_tokens=24)))[0] for p in EIGHT_PROMPTS]
    together = await asyncio.gather(*(collect(wide_engine, chat(p, max_tokens=24)) for p in EIGHT_PROMPTS))
    assert [text for text, _ in together] == alone


async def test_requests_joining_a_running_batch_mid_generation_get_their_single_stream_output(wide_engine):
    prompts = EIGHT_PROMPTS[1:5]
    alone = [(await collect(wide_engine, chat(p, max_tokens=40)))[0] for p in prompts]
    streams = [wide_engine.generate(chat(p, max_tokens=40)) for p in prompts]
    texts = ["" for _ in prompts]
    try:
        for i, stream in enumerate(streams):  # each joins once those before it have a few tokens out
            for _ in range(3):
                texts[i] += (await anext(stream)).text
        for i, stream in enumerate(streams):
            texts[i] += "".join([d.text async for d in stream])
    finally:
        for stream in streams:
            await stream.aclose()
    assert texts == alone


async def test_aborting_a_running_stream_admits_a_waiting_request_while_the_others_keep_running(engine):
    await wait_idle(engine)
    requests = [chat("Write a long story about a dragon.", max_tokens=400) for _ in range(4)]
    running = [engine.generate(r) for r in requests]
    waiting = engine.generate(chat("Write a long story about a lighthouse.", max_tokens=400))
    try:
        for stream in running:
            await anext(stream)
        first = asyncio.create_task(anext(waiting))
        while engine.waiting_requests < 1:
            await asyncio.sleep(0.01)
        await engine.abort(requests[0].request_id)
        assert engine.active_requests == 3  # the aborted one's place is free at once
        assert (await first).finish_reason is None
        assert (engine.active_requests, engine.waiting_requests) == (4, 0)
    finally:
        for stream in (*running, waiting):
            await stream.aclose()
    assert await wait_idle(engine) < 2.0


async def test_no_more_than_max_concurrency_requests_run_at_once_and_all_complete(engine):
    await wait_idle(engine)
    seen = []

    async def watched(request):
        deltas = []
        async for delta in engine.generate(request):
            seen.append((engine.active_requests, engine.waiting_requests))
            deltas.append(delta)
        return deltas[-1]

    prompts = EIGHT_PROMPTS[:6]
    lasts = await asyncio.gather(*(watched(chat(p, max_tokens=12)) for p in prompts))
    assert max(active for active, _ in seen) == engine.max_concurrency
    assert max(waiting for _, waiting in seen) >= 1
    assert all(last.finish_reason in ("stop", "length") for last in lasts)


async def test_closing_the_stream_early_frees_the_slot_and_the_engine_keeps_working(engine):
    await wait_idle(engine)  # a stream cut by a stop string lets its thread finish one step later
    stream = engine.generate(chat("Write a long story about a dragon.", max_tokens=400))
    first = await anext(stream)
    assert first.finish_reason is None
    assert engine.active_requests == 1
    await stream.aclose()
    assert await wait_idle(engine) < 2.0
    assert engine.active_requests == 0
    text, _ = await collect(engine, chat(FRANCE, max_tokens=32))
    assert "Paris" in text


async def test_cancelling_the_consuming_task_frees_the_slot(engine):
    await wait_idle(engine)
    started = asyncio.Event()

    async def consume():
        async for _ in engine.generate(chat("Write a long story about a dragon.", max_tokens=400)):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_idle(engine) < 2.0
    assert engine.active_requests == 0


async def test_abort_ends_a_running_stream_with_finish_reason_abort(engine):
    request = chat("Write a long story about a dragon.", max_tokens=400)
    deltas = []
    async for delta in engine.generate(request):
        deltas.append(delta)
        if len(deltas) == 2:
            await engine.abort(request.request_id)
    assert deltas[-1].finish_reason == "abort"
    assert deltas[-1].usage.completion_tokens < 400
    assert await wait_idle(engine) < 2.0


async def test_an_unknown_model_is_refused_with_404(engine):
    request = GenerationRequest(request_id="x", model="gpt-17", prompt="hi")
    with pytest.raises(RequestError) as info:
        await collect(engine, request)
    assert info.value.status == 404
    assert info.value.code == "model_not_found"


async def test_a_prompt_longer_than_the_context_is_refused_with_400_naming_the_lengths(engine):
    request = GenerationRequest(request_id="long", model=BUILTIN_MODEL_ID, prompt="hello " * 9000)
    with pytest.raises(RequestError) as info:
        await collect(engine, request)
    assert info.value.status == 400
    assert "8192" in info.value.message


async def test_a_seed_makes_a_sampled_request_repeatable_even_beside_other_requests(engine):
    seeded = dict(temperature=1.0, max_tokens=20, seed=1234)
    first, _ = await collect(engine, chat("Tell me a joke.", **seeded))
    again, _ = await asyncio.gather(
        collect(engine, chat("Tell me a joke.", **seeded)),
        collect(engine, chat("Tell me a joke.", temperature=1.0, max_tokens=20)),
    )
    assert again[0] == first
    other_seeds = {(await collect(engine, chat("Tell me a joke.", **{**seeded, "seed": s})))[0] for s in (1, 2, 3)}
    assert len(other_seeds | {first}) > 1


async def test_closing_the_engine_ends_running_streams_with_abort_and_can_be_repeated(builtin_model_dir):
    own = TransformersEngine(builtin_model_dir, BUILTIN_MODEL_ID, max_concurrency=2)
    await own.start()
    stream = own.generate(chat("Write a long story about a dragon.", max_tokens=400))
    await anext(stream)
    await own.close()
    rest = [delta async for delta in stream]
    assert rest[-1].finish_reason == "abort"
    assert own.active_requests == 0
    assert not own.health().ready
    await own.close()
    with pytest.raises(EngineError):
        await collect(own, chat(FRANCE))


async def test_health_reports_ready_with_one_model_card_carrying_the_context_length(engine):
    assert engine.health().ready
    [card] = engine.models()
    assert (card.id, card.backend, card.context_length) == (BUILTIN_MODEL_ID, "cpu-transformers", 8192)


async def test_the_loaded_model_attends_through_the_engines_grouped_attention(engine):
    # SmolLM2 has 9 query heads on 3 K/V heads; the concurrency tests here check its batched output.
    assert engine._model.config._attn_implementation == ATTENTION
    assert engine._model.config.num_attention_heads > engine._model.config.num_key_value_heads


async def test_the_detokenizer_holds_back_half_a_character_and_the_start_of_a_stop_string(tokenizer):
    text = "Hi 🙂 there, the end of it"
    detok = IncrementalDetokenizer(tokenizer, stop=("the end",))
    pieces = [detok.add([i]) for i in tokenizer(text)["input_ids"]]
    assert not any("\ufffd" in p for p in pieces)
    assert detok.stopped
    assert "".join(pieces) + detok.flush() == "Hi 🙂 there, "


@pytest.mark.parametrize("chunk", [1, 3])
async def test_the_detokenizer_streams_exactly_the_text_a_full_decode_gives(tokenizer, chunk):
    text = "Crème brûlée, 北京 and 🙂🚀 — “quoted” text.\n  Indented line."
    ids = tokenizer(text)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.add(ids[i:i + chunk]) for i in range(0, len(ids), chunk)] + [detok.flush()]
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)


async def test_a_request_waiting_for_a_slot_can_be_aborted_and_ends_with_abort(engine):
    await wait_idle(engine)
    running = [engine.generate(chat("Write a long story about a dragon.", max_tokens=400)) for _ in range(4)]
    try:
        for stream in running:
            await anext(stream)
        waiting = chat("Write a long story about a dragon.", max_tokens=400)
        task = asyncio.create_task(collect(engine, waiting))
        while engine.waiting_requests < 1:
            await asyncio.sleep(0.01)
        assert engine.active_requests == 4
        await engine.abort(waiting.request_id)
        text, last = await asyncio.wait_for(task, 2.0)
        assert (text, last.finish_reason, last.usage.completion_tokens) == ("", "abort", 0)
    finally:
        for stream in running:
            await stream.aclose()
    assert await wait_idle(engine) < 2.0


class _FakeHost(Probe):
    def __init__(self, cuda=False, npu=False):
        self._cuda, self._npu = cuda, npu

    def cuda(self):
        return self._cuda

    def npu(self):
        return self._npu


async def test_auto_picks_the_cpu_backend_on_this_host():
    assert select_backend("auto") == "cpu-transformers"
    assert select_backend("auto", probe=_FakeHost(cuda=True)) == "cuda-transformers"
    assert select_backend("auto", probe=_FakeHost(npu=True)) == "ascend-transformers"
    assert select_backend("cuda-vllm") == "cuda-vllm"


async def test_the_factory_builds_a_cpu_engine_on_the_builtin_model(builtin_model_dir):
    engine = create_engine("auto", models_dir=builtin_model_dir.parent, max_concurrency=2)
    assert isinstance(engine, TransformersEngine)
    assert engine.models()[0].id == BUILTIN_MODEL_ID


@pytest.mark.parametrize("backend, missing", [
    ("cuda-transformers", "torch.cuda.is_available() is False"),
    ("ascend-transformers", "torch.npu.is_available() is False"),
    ("cuda-vllm", "torch.cuda.is_available() is False"),
    ("ascend-vllm", "torch-npu, vllm-ascend not installed"),
])
async def test_backends_this_host_cannot_run_fail_naming_what_is_missing(tmp_path, backend, missing):
    with pytest.raises(EngineError, match=backend) as info:
        create_engine(backend, models_dir=tmp_path, max_concurrency=1)
    assert missing in info.value.message


async def test_an_unknown_backend_name_is_an_error():
    with pytest.raises(EngineError, match="unknown backend"):
        select_backend("tpu-jax")


async def test_two_models_loaded_at_the_same_time_both_load_and_answer(builtin_model_dir: Path):
    """A worker loads two models on first use at once (two threads): transformers' process-wide
    meta-device state must not interleave between them (it did: "Cannot copy out of meta tensor"
    for both, and for every later load in that process)."""
    engines = [TransformersEngine(builtin_model_dir, BUILTIN_MODEL_ID, max_concurrency=1) for _ in range(3)]
    try:
        await asyncio.gather(*(e.start() for e in engines))
        for e in engines:
            text, _ = await collect(e, chat("What is the capital of France?", max_tokens=8))
            assert "Paris" in text
    finally:
        for e in engines:
            await e.close()

"""The `sim` engine: paced made-up tokens with no model, for measuring cynode's own overhead."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from cynode.engines import ChatMessage, GenerationRequest, Probe, SamplingParams, create_engine, select_backend
from cynode.engines.sim_engine import WORDS, SimEngine
from cynode.errors import RequestError

_ids = itertools.count()


class FakeClock:
    """Time moves only when the engine sleeps, by exactly what it asked for."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)
        self.t += seconds


def chat(text: str = "Tell me a story.", model: str = "sim", **sampling) -> GenerationRequest:
    return GenerationRequest(request_id=f"sim-{next(_ids)}", model=model, messages=(ChatMessage("user", text),),
                             sampling=SamplingParams(**sampling))


async def started(**kwargs) -> SimEngine:
    kwargs.setdefault("clock", FakeClock())
    engine = SimEngine(**kwargs)
    await engine.start()
    return engine


async def collect(engine, request):
    deltas = [d async for d in engine.generate(request)]
    return "".join(d.text for d in deltas), deltas


async def test_the_first_token_comes_after_ttft_and_the_next_ones_at_the_configured_pace():
    clock = FakeClock()
    engine = await started(ttft=0.5, tokens_per_second=4, answer_tokens=5, clock=clock)
    times = [clock.now() async for delta in engine.generate(chat()) if delta.text]
    assert times == pytest.approx([0.5, 0.75, 1.0, 1.25, 1.5])
    # The end-of-text token takes a step too, as a model's would; it shows no text.
    assert clock.sleeps == pytest.approx([0.5] + [0.25] * 5)


async def test_every_answer_is_the_same_cycling_words_and_ends_with_stop_after_answer_tokens():
    engine = await started(answer_tokens=len(WORDS) + 3)
    first, deltas = await collect(engine, chat("one prompt"))
    second, _ = await collect(engine, chat("quite another prompt", temperature=1.0))
    assert first == second == "".join(WORDS) + "".join(WORDS[:3])
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage.completion_tokens == len(WORDS) + 3


async def test_max_tokens_cuts_the_answer_and_finishes_with_length():
    engine = await started(answer_tokens=64)
    text, deltas = await collect(engine, chat(max_tokens=4))
    assert text == "".join(WORDS[:4])
    assert (deltas[-1].finish_reason, deltas[-1].usage.completion_tokens) == ("length", 4)


async def test_a_stop_string_cuts_the_text_before_it_and_finishes_with_stop():
    engine = await started()
    text, deltas = await collect(engine, chat(stop=(" lazy",)))
    assert text == "".join(WORDS[:WORDS.index(" lazy")])
    assert deltas[-1].finish_reason == "stop"


async def test_usage_counts_the_prompt_words_and_the_answer_tokens():
    engine = await started(answer_tokens=3)
    request = GenerationRequest(request_id="u", model="sim", prompt="five words in this prompt")
    _, deltas = await collect(engine, request)
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (5, 3)


async def test_abort_ends_a_running_stream_with_abort_and_frees_its_slot():
    engine = await started(max_concurrency=1)
    request = chat()
    stream = engine.generate(request)
    first = await anext(stream)
    assert engine.active_requests == 1
    await engine.abort(request.request_id)
    rest = [d async for d in stream]
    assert [d.finish_reason for d in rest] == ["abort"]
    assert rest[-1].usage.completion_tokens == len(first.token_ids)
    assert engine.active_requests == 0


async def test_abort_during_the_wait_for_the_first_token_ends_the_stream_at_once():
    class StuckClock(FakeClock):
        async def sleep(self, seconds: float) -> None:
            await asyncio.Event().wait()  # only an abort gets past this

    engine = await started(clock=StuckClock())
    request = chat()
    task = asyncio.create_task(collect(engine, request))
    while not engine.active_requests:
        await asyncio.sleep(0)
    await engine.abort(request.request_id)
    text, deltas = await task
    assert (text, deltas[-1].finish_reason, deltas[-1].usage.completion_tokens) == ("", "abort", 0)


async def test_a_waiting_request_gets_the_slot_when_the_running_one_ends():
    engine = await started(max_concurrency=1, answer_tokens=3)
    running = engine.generate(chat())
    await anext(running)
    waiting = asyncio.create_task(collect(engine, chat()))
    while not engine.waiting_requests:
        await asyncio.sleep(0)
    assert (engine.active_requests, engine.waiting_requests) == (1, 1)
    assert [d.finish_reason async for d in running][-1] == "stop"
    text, deltas = await waiting
    assert deltas[-1].finish_reason == "stop" and text == "".join(WORDS[:3])
    assert (engine.active_requests, engine.waiting_requests) == (0, 0)


async def test_a_request_aborted_while_waiting_ends_with_abort_and_takes_no_slot():
    engine = await started(max_concurrency=1)
    running = engine.generate(chat())
    await anext(running)
    request = chat()
    waiting = asyncio.create_task(collect(engine, request))
    while not engine.waiting_requests:
        await asyncio.sleep(0)
    await engine.abort(request.request_id)
    text, deltas = await waiting
    assert (text, deltas[-1].finish_reason, deltas[-1].usage.completion_tokens) == ("", "abort", 0)
    assert engine.waiting_requests == 0
    await running.aclose()
    assert engine.active_requests == 0
    _, deltas = await collect(engine, chat(max_tokens=2))
    assert deltas[-1].finish_reason == "length"


async def test_closing_the_stream_early_frees_the_slot():
    engine = await started(max_concurrency=1)
    stream = engine.generate(chat())
    await anext(stream)
    await stream.aclose()
    assert engine.active_requests == 0


async def test_an_unknown_model_is_refused_with_404_and_a_prompt_beyond_the_context_with_400():
    engine = await started(context_length=10)
    with pytest.raises(RequestError) as info:
        await collect(engine, chat(model="gpt-17"))
    assert (info.value.status, info.value.code) == (404, "model_not_found")
    with pytest.raises(RequestError) as info:
        await collect(engine, GenerationRequest(request_id="l", model="sim", prompt="word " * 11))
    assert info.value.status == 400 and "10 tokens" in info.value.message


async def test_closing_the_engine_ends_running_streams_with_abort_and_reports_not_ready():
    engine = await started()
    stream = engine.generate(chat())
    await anext(stream)
    await engine.close()
    assert [d.finish_reason async for d in stream][-1] == "abort"
    assert not engine.health().ready


async def test_the_sim_backend_is_never_chosen_by_auto_but_built_by_name(tmp_path):
    class EverythingHost(Probe):
        def cuda(self):
            return True

        def npu(self):
            return True

    assert "sim" not in {select_backend("auto"), select_backend("auto", probe=EverythingHost())}
    engine = create_engine("sim", models_dir=tmp_path, max_concurrency=3)
    assert isinstance(engine, SimEngine)
    assert (engine.backend, engine.max_concurrency, engine.models()[0].id) == ("sim", 3, "sim")


async def test_the_real_clock_paces_a_short_answer_and_counts_its_tokens():
    engine = await started(clock=None, ttft=0.01, tokens_per_second=500, answer_tokens=5)
    text, deltas = await collect(engine, chat())
    assert text == "".join(WORDS[:5])
    assert deltas[-1].usage.completion_tokens == 5


@pytest.mark.parametrize("kind, param", [("json", "response_format"), ("tool_call", "tool_choice")])
async def test_a_guided_request_is_refused_naming_its_parameter_never_answered_with_words(kind, param):
    from cynode.sampling import Guide

    engine = await started()
    with pytest.raises(RequestError) as caught:
        await collect(engine, chat(guide=Guide(kind, '{"type":"object"}')))
    assert caught.value.status == 400 and caught.value.param == param and caught.value.code == "unsupported_parameter"
    await engine.close()


async def test_tools_without_a_forced_choice_are_accepted_and_the_words_come_as_ever():
    engine = await started()
    plain = await collect(engine, chat())
    request = chat()
    with_tools = GenerationRequest(request_id=request.request_id + "-t", model="sim", messages=request.messages,
                                   sampling=request.sampling, tools='[{"type":"function","function":{"name":"f"}}]')
    assert (await collect(engine, with_tools))[0] == plain[0]
    await engine.close()

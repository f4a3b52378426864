"""Log probabilities from the transformers engine on the real SmolLM2 model, and the embedding engine."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import pytest_asyncio

from cynode.engines import BUILTIN_MODEL_ID, ChatMessage, GenerationRequest, SamplingParams
from cynode.engines.embedding_model import find_embedding_model
from cynode.engines.transformers_engine import TransformersEngine
from cynode.errors import RequestError

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]
_ids = itertools.count()


def chat(text: str, **sampling) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(request_id=f"lp-{next(_ids)}", model=BUILTIN_MODEL_ID,
                             messages=(ChatMessage("user", text),), sampling=SamplingParams(**sampling))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(builtin_model_dir: Path):
    eng = TransformersEngine(builtin_model_dir, BUILTIN_MODEL_ID, max_concurrency=2)
    await eng.start()
    yield eng
    await eng.close()


async def test_a_greedy_answer_reports_each_tokens_logprob_and_it_is_the_most_likely(engine):
    deltas = [d async for d in engine.generate(chat("What is the capital of France?", max_tokens=8, logprobs=3))]
    entries = [e for d in deltas for e in d.logprobs]
    text = "".join(d.text for d in deltas)
    assert len(entries) == deltas[-1].usage.completion_tokens  # one per shown token (no end-of-text)
    assert "".join(e.token for e in entries) == text
    assert b"".join(e.bytes for e in entries).decode() == text
    for e in entries:
        assert e.logprob <= 0 and len(e.top) == 3
        assert e.top[0].token == e.token and math.isclose(e.top[0].logprob, e.logprob, abs_tol=1e-5)  # greedy
        assert e.top[0].logprob >= e.top[1].logprob >= e.top[2].logprob
        assert sum(math.exp(t.logprob) for t in e.top) <= 1 + 1e-4


async def test_logprobs_describe_the_model_so_a_sampled_answer_gets_them_too(engine):
    deltas = [d async for d in engine.generate(chat("Name a colour.", max_tokens=6, logprobs=0, temperature=1.0,
                                                    seed=3))]
    entries = [e for d in deltas for e in d.logprobs]
    assert entries and all(e.top == () and e.logprob <= 0 for e in entries)


async def test_without_logprobs_no_delta_carries_any(engine):
    deltas = [d async for d in engine.generate(chat("Hi", max_tokens=4))]
    assert all(d.logprobs == () for d in deltas)


async def test_the_same_answer_with_and_without_logprobs(engine):
    plain = "".join([d.text async for d in engine.generate(chat("Count to five.", max_tokens=10))])
    with_logprobs = "".join([d.text async for d in engine.generate(chat("Count to five.", max_tokens=10, logprobs=2))])
    assert plain == with_logprobs


async def test_too_many_alternatives_are_refused(engine):
    with pytest.raises(RequestError) as info:
        [d async for d in engine.generate(chat("Hi", logprobs=21))]
    assert info.value.param == "logprobs"


@pytest.mark.skipif(find_embedding_model() is None, reason="the embedding model's wheel is not installed")
async def test_the_embedding_engine_ranks_by_meaning_and_refuses_to_generate():
    from cynode.engines.embedding_engine import EmbeddingEngine

    engine = EmbeddingEngine(find_embedding_model(), "all-minilm-l6-v2")
    await engine.start()
    try:
        out = await engine.embed(["A cat sits on the mat.", "A kitten is resting on a rug.", "Interest rates rose."])
        a, b, c = out.vectors
        dot = lambda x, y: sum(p * q for p, q in zip(x, y))  # noqa: E731  (normalised: the cosine)
        assert dot(a, b) > dot(a, c) + 0.2 and abs(dot(a, a) - 1) < 1e-4 and len(a) == engine.dimensions == 384
        with pytest.raises(RequestError):
            [d async for d in engine.generate(GenerationRequest(request_id="x", model="all-minilm-l6-v2", prompt="hi"))]
        with pytest.raises(RequestError) as info:
            await engine.embed(["hi"], dimensions=128)
        assert info.value.param == "dimensions"
    finally:
        await engine.close()

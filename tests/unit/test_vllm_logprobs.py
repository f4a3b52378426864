"""Log probabilities from the vLLM engine (CPU wheel) on the real SmolLM2 model: the same shape and
meaning as the transformers engine's (cynode.engines.logprobs)."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import pytest
import pytest_asyncio

from cynode.engines import BUILTIN_MODEL_ID, ChatMessage, GenerationRequest, SamplingParams
from cynode.engines.vllm_engine import VllmEngine

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(900)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_ids = itertools.count()


def chat(text: str, **sampling) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(request_id=f"vlp-{next(_ids)}", model=BUILTIN_MODEL_ID,
                             messages=(ChatMessage("user", text),), sampling=SamplingParams(**sampling))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(builtin_model_dir: Path):
    eng = VllmEngine(builtin_model_dir, BUILTIN_MODEL_ID, max_concurrency=4, kv_cache_gib=1, max_model_len=2048)
    await eng.start()
    yield eng
    await eng.close()


async def test_vllm_reports_each_shown_tokens_logprob_with_the_top_alternatives(engine):
    deltas = [d async for d in engine.generate(chat("What is the capital of France?", max_tokens=8, logprobs=3))]
    entries = [e for d in deltas for e in d.logprobs]
    text = "".join(d.text for d in deltas)
    assert len(entries) == deltas[-1].usage.completion_tokens
    assert b"".join(e.bytes for e in entries).decode() == text
    for e in entries:
        assert e.logprob <= 0 and len(e.top) == 3
        assert e.top[0].token == e.token and math.isclose(e.top[0].logprob, e.logprob, abs_tol=1e-4)  # greedy
        assert e.top[0].logprob >= e.top[1].logprob >= e.top[2].logprob


async def test_vllm_without_logprobs_sends_none(engine):
    deltas = [d async for d in engine.generate(chat("Hi", max_tokens=4))]
    assert all(d.logprobs == () for d in deltas)

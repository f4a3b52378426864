"""The batcher on the real SmolLM2: preemption under a KV cap and a long prompt arriving mid-batch
leave every stream's greedy output as it is alone; the engine's capacity follows its memory budget."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cynode.engines import BUILTIN_MODEL_ID
from cynode.engines.base import SamplingParams
from cynode.engines.batcher import ContinuousBatcher, Sequence
from cynode.engines.sampling import TokenSampler
from cynode.engines.transformers_engine import TransformersEngine

pytestmark = pytest.mark.slow
WAIT = 240.0


@pytest.fixture(scope="module")
def real(builtin_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(builtin_model_dir, dtype=torch.float32, local_files_only=True).eval()
    return model, tokenizer


def ids(tokenizer, text: str) -> list[int]:
    out = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


class Stream:
    def __init__(self, name: str, prompt: list[int], max_new: int) -> None:
        self.tokens: list[int] = []
        self.ended = threading.Event()
        self.seq = Sequence(name, prompt, max_new, TokenSampler(SamplingParams(temperature=0.0), prompt), self.put)

    def put(self, kind: str, payload: object) -> None:
        if kind == "tokens":
            self.tokens.extend(payload)
        else:
            assert kind == "end", payload
            self.ended.set()

    def wait(self) -> list[int]:
        assert self.ended.wait(WAIT)
        return self.tokens


def run(model, streams: list[Stream], **kwargs) -> ContinuousBatcher:
    batcher = ContinuousBatcher(model, eos_ids=(), **kwargs)
    batcher.trace = []
    batcher.start()
    try:
        for s in streams:
            batcher.submit(s.seq)
        for s in streams:
            s.wait()
    finally:
        batcher.close()
    return batcher


def alone(model, prompt: list[int], max_new: int, **kwargs) -> list[int]:
    stream = Stream("alone", prompt, max_new)
    run(model, [stream], max_batch=1, **kwargs)
    return stream.tokens


@pytest.mark.timeout(900)
def test_preempted_greedy_requests_resume_with_exactly_their_unpreempted_text(real):
    model, tokenizer = real
    prompts = [ids(tokenizer, q) for q in ("What is the capital of France?", "Name three colours.",
                                           "Say hello in Spanish.")]
    expected = [alone(model, p, 16) for p in prompts]
    streams = [Stream(f"s{i}", p, 16) for i, p in enumerate(prompts)]
    # Three rows fit at admission, not once they have grown: the newest is preempted and recomputed.
    batcher = run(model, streams, max_batch=3, kv_tokens=3 * (max(map(len, prompts)) + 1) + 6)
    assert batcher.preemptions >= 1, batcher.trace
    assert [s.tokens for s in streams] == expected
    assert [tokenizer.decode(s.tokens) for s in streams] == [tokenizer.decode(e) for e in expected]


@pytest.mark.timeout(900)
def test_a_long_prompt_arriving_mid_batch_leaves_the_running_texts_unchanged_and_is_chunked_between_steps(real):
    model, tokenizer = real
    short = [ids(tokenizer, "What is the capital of France?"), ids(tokenizer, "Name three colours.")]
    long = ids(tokenizer, "Summarise this. " + "The quick brown fox jumps over the lazy dog. " * 60)
    assert len(long) > 4 * 128
    expected = [alone(model, p, 24, prefill_tokens=128) for p in short]
    running = [Stream(f"r{i}", p, 24) for i, p in enumerate(short)]
    batcher = ContinuousBatcher(model, eos_ids=(), max_batch=3, prefill_tokens=128)
    batcher.trace = trace = []
    batcher.start()
    try:
        for s in running:
            batcher.submit(s.seq)
        while min(len(s.tokens) for s in running) < 2:
            threading.Event().wait(0.01)
        late = Stream("long", long, 4)
        batcher.submit(late.seq)
        assert [s.wait() for s in running] == expected
        late.wait()
    finally:
        batcher.close()
    chunks = [i for i, e in enumerate(trace) if e[0] == "prefill" and e[1] == "long"]
    assert len(chunks) == -(-len(long) // 128)
    # The running streams were decoded between every two chunks of the long prompt's prefill.
    for before, after in zip(chunks, chunks[1:]):
        steps = [e for e in trace[before + 1:after] if e[0] == "decode"]
        assert len(steps) == 1 and {"r0", "r1"} <= set(steps[0][1]), trace[before:after + 1]


@pytest.mark.timeout(600)
async def test_the_engines_capacity_is_its_memory_budget_over_a_full_context_sequence(builtin_model_dir):
    per_sequence = 2 * 30 * 3 * 64 * 4 * 8192  # SmolLM2 fp32 KV bytes per token x its context
    engine = TransformersEngine(builtin_model_dir, BUILTIN_MODEL_ID, memory_budget=5 * per_sequence + 1)
    await engine.start()
    try:
        assert engine.capacity() == 5
        assert engine._batcher.max_batch == 5 and engine._batcher.kv_tokens == 5 * 8192
    finally:
        await engine.close()


@pytest.mark.timeout(900)
def test_prompts_arriving_together_are_prefilled_in_one_forward_and_answer_as_they_do_one_at_a_time(real):
    model, tokenizer = real
    questions = ("What is the capital of France?", "Name three colours.", "Say hello in Spanish.",
                 "Write a haiku about the sea.")
    prompts = [ids(tokenizer, q) for q in questions]
    expected = [alone(model, p, 24) for p in prompts]
    prefills: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: prefills.append(kw["input_ids"].shape[1]) if kw["input_ids"].shape[1] > 1 else None,
        with_kwargs=True)
    streams = [Stream(f"s{i}", p, 24) for i, p in enumerate(prompts)]
    batcher = ContinuousBatcher(model, eos_ids=(), max_batch=4)
    batcher.trace = []
    with batcher._cond:  # the four arrive together: all are waiting when the scheduler first looks
        batcher._waiting.extend(s.seq for s in streams)
    try:
        batcher.start()
        for s in streams:
            s.wait()
    finally:
        hook.remove()
        batcher.close()
    assert prefills == [sum(map(len, prompts))] and batcher.packed_prefills == 1  # one forward, packed
    assert [s.tokens for s in streams] == expected
    assert [tokenizer.decode(s.tokens) for s in streams] == [tokenizer.decode(e) for e in expected]

"""The continuous-batching scheduler on a tiny random-weight Llama: joins, leaves, cap, order, failures.

A 2-layer model with large random weights decodes in about a millisecond per step and has clear
argmax margins, so greedy equality between a batch and a lone sequence tests the cache, the mask
and the positions, not luck with ties. The real model's equality is checked in
test_transformers_engine.py.
"""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cynode.engines.attention import NAME as ATTENTION
from cynode.engines.base import SamplingParams
from cynode.engines.batcher import ContinuousBatcher, Sequence
from cynode.engines.sampling import TokenSampler

VOCAB = 97
WAIT = 60.0  # seconds; only a hung scheduler ever gets near this


@pytest.fixture(scope="module", params=["sdpa", ATTENTION])
def model(request):
    """Grouped heads (4 on 2), under transformers' attention and under the engine's (attention.py)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         initializer_range=0.5, attn_implementation=request.param)
    return LlamaForCausalLM(config).eval()


class Log:
    """Every event of every sequence, in the order the scheduler thread produced them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def sink(self, name: str):
        def put(kind: str, payload: object) -> None:
            with self.lock:
                self.events.append((name, kind))
        return put

    def index(self, name: str, kind: str) -> int:
        return self.events.index((name, kind))


class Stream:
    """One sequence's tokens and how it ended."""

    def __init__(self, name: str, prompt: list[int], max_new: int, log: Log | None = None, **sampling) -> None:
        sampling.setdefault("temperature", 0.0)
        self.name, self.tokens, self.ended = name, [], threading.Event()
        self.kind = self.error = None
        self.log_sink = log.sink(name) if log else None
        self.seq = Sequence(name, prompt, max_new, TokenSampler(SamplingParams(**sampling), prompt), self.put)

    def put(self, kind: str, payload: object) -> None:
        if self.log_sink:
            self.log_sink(kind, payload)
        if kind == "tokens":
            self.tokens.extend(payload)
        else:
            self.kind, self.error = kind, payload
            self.ended.set()

    def wait(self) -> list[int]:
        assert self.ended.wait(WAIT), f"{self.name} never ended"
        return self.tokens

    def wait_tokens(self, n: int) -> None:
        for _ in range(int(WAIT * 1000)):
            if len(self.tokens) >= n or self.ended.is_set():
                return
            threading.Event().wait(0.001)
        raise AssertionError(f"{self.name} has {len(self.tokens)} tokens, expected {n}")


def prompt(seed: int, length: int) -> list[int]:
    return torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture
def make_batcher(model):
    made = []

    def make(max_batch: int = 8, eos_ids=(), the_model=None, **kwargs) -> ContinuousBatcher:
        batcher = ContinuousBatcher(the_model or model, eos_ids=eos_ids, max_batch=max_batch, **kwargs)
        batcher.start()
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close()


def alone(make_batcher, prompt_ids: list[int], max_new: int, **sampling) -> list[int]:
    stream = Stream("alone", prompt_ids, max_new, **sampling)
    make_batcher(max_batch=1).submit(stream.seq)
    return stream.wait()


PROMPTS = [prompt(i, n) for i, n in enumerate((5, 17, 3, 40, 11, 1, 29, 8))]


def test_a_lone_sequence_decodes_what_plain_greedy_generate_gives(make_batcher, model):
    ids = PROMPTS[1]
    expected = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert alone(make_batcher, ids, 30) == expected[0, len(ids):].tolist()


def test_eight_sequences_of_different_lengths_decoded_together_each_match_their_output_alone(make_batcher):
    expected = [alone(make_batcher, p, 40) for p in PROMPTS]
    batcher = make_batcher(max_batch=8)
    streams = [Stream(f"s{i}", p, 40) for i, p in enumerate(PROMPTS)]
    for stream in streams:
        batcher.submit(stream.seq)
    assert [s.wait() for s in streams] == expected
    assert batcher.largest_batch == 8


def test_sequences_joining_a_running_batch_mid_generation_get_their_output_alone(make_batcher):
    expected = [alone(make_batcher, p, 60 - 10 * i) for i, p in enumerate(PROMPTS[:4])]
    batcher = make_batcher(max_batch=4)
    streams = [Stream(f"s{i}", p, 60 - 10 * i) for i, p in enumerate(PROMPTS[:4])]
    for stream in streams:  # each joins after the ones before it have decoded a few tokens
        batcher.submit(stream.seq)
        stream.wait_tokens(7)
    assert [s.wait() for s in streams] == expected


def test_sequences_that_outgrow_the_first_cache_buffers_still_match_their_output_alone(make_batcher):
    long_prompt, short_prompt = prompt(50, 300), prompt(51, 4)
    expected = [alone(make_batcher, long_prompt, 250), alone(make_batcher, short_prompt, 400)]
    batcher = make_batcher(max_batch=2)
    short = Stream("short", short_prompt, 400)
    batcher.submit(short.seq)
    short.wait_tokens(20)  # the long prompt joins a narrow batch: the cache must widen to the left
    long = Stream("long", long_prompt, 250)
    batcher.submit(long.seq)
    assert [long.wait(), short.wait()] == expected


def test_a_seeded_sampled_sequence_draws_the_same_tokens_in_a_batch_as_alone(make_batcher):
    seeded = dict(temperature=1.0, top_p=0.9, top_k=20, seed=7, repetition_penalty=1.2, frequency_penalty=0.5)
    expected = alone(make_batcher, PROMPTS[0], 30, **seeded)
    batcher = make_batcher(max_batch=3)
    streams = [Stream("seeded", PROMPTS[0], 30, **seeded), Stream("other", PROMPTS[1], 30, temperature=1.0),
               Stream("greedy", PROMPTS[2], 30)]
    for stream in streams:
        batcher.submit(stream.seq)
    assert streams[0].wait() == expected
    assert all(len(s.wait()) == 30 for s in streams)


def test_the_batch_never_holds_more_than_max_batch_and_waiting_sequences_start_in_order(make_batcher, model):
    rows = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: rows.append(kw["input_ids"].shape[0]),
                                           with_kwargs=True)
    try:
        log = Log()
        batcher = make_batcher(max_batch=3)
        streams = [Stream(f"s{i}", PROMPTS[i], 10 + 5 * i, log) for i in range(7)]
        for stream in streams:
            batcher.submit(stream.seq)
        for stream in streams:
            stream.wait()
    finally:
        hook.remove()
    assert max(rows) == 3
    firsts = [log.index(s.name, "tokens") for s in streams]
    assert firsts == sorted(firsts)
    assert [len(s.tokens) for s in streams] == [10 + 5 * i for i in range(7)]


def test_cancelling_a_running_sequence_admits_a_waiting_one_while_the_others_run(make_batcher):
    log = Log()
    batcher = make_batcher(max_batch=2)
    first, second, waiting = (Stream(name, PROMPTS[i], 1000, log) for i, name in enumerate(("a", "b", "c")))
    for stream in (first, second):
        batcher.submit(stream.seq)
        stream.wait_tokens(1)
    batcher.submit(waiting.seq)
    assert (batcher.active, batcher.waiting) == (2, 1)
    batcher.cancel(first.seq)
    assert batcher.active == 1  # its place counts as free at once
    waiting.wait_tokens(1)
    assert not second.ended.is_set()
    assert (batcher.active, batcher.waiting) == (2, 0)
    batcher.cancel(second.seq)
    batcher.cancel(waiting.seq)


def test_a_sequence_ends_at_end_of_text_or_after_max_new_tokens(make_batcher):
    reference, other = alone(make_batcher, PROMPTS[3], 20), alone(make_batcher, PROMPTS[4], 3)
    eos = next(t for t in reference[2:] if t not in other)
    batcher = make_batcher(max_batch=2, eos_ids={eos})
    at_eos, at_length = Stream("eos", PROMPTS[3], 20), Stream("length", PROMPTS[4], 3)
    for stream in (at_eos, at_length):
        batcher.submit(stream.seq)
    assert at_eos.wait() == reference[:reference.index(eos) + 1]
    assert len(at_length.wait()) == 3
    assert (at_eos.kind, at_length.kind) == ("end", "end")
    assert batcher.active == 0


class FailingOnce:
    """The model, except that its `fail_at`-th decode step raises."""

    def __init__(self, model, fail_at: int) -> None:
        self.model, self.config, self.fail_at, self.steps = model, model.config, fail_at, 0

    def __call__(self, **kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            self.steps += 1
            if self.steps == self.fail_at:
                raise RuntimeError("device lost")
        return self.model(**kwargs)


def test_a_failing_step_fails_the_running_sequences_and_the_scheduler_keeps_serving(make_batcher, model):
    batcher = make_batcher(max_batch=2, the_model=FailingOnce(model, fail_at=3))
    streams = [Stream(f"s{i}", PROMPTS[i], 50) for i in range(2)]
    for stream in streams:
        batcher.submit(stream.seq)
    for stream in streams:
        stream.wait()
        assert stream.kind == "error" and "device lost" in str(stream.error)
    after = Stream("after", PROMPTS[2], 10)
    batcher.submit(after.seq)
    assert after.wait() == alone(make_batcher, PROMPTS[2], 10)
    assert batcher.active == 0


def test_closing_the_scheduler_stops_its_thread_and_refuses_new_sequences(make_batcher):
    batcher = make_batcher(max_batch=1)
    running = Stream("running", PROMPTS[0], 100_000)
    batcher.submit(running.seq)
    running.wait_tokens(1)
    batcher.close()
    assert not batcher._thread.is_alive()
    assert batcher.active == 0
    with pytest.raises(RuntimeError):
        batcher.submit(Stream("late", PROMPTS[1], 5).seq)


# chunked prefill, the KV cap and preemption ----------------------------------------------------

def alone_with(make_batcher, prompt_ids: list[int], max_new: int, **batcher_kwargs) -> list[int]:
    stream = Stream("alone", prompt_ids, max_new)
    make_batcher(max_batch=1, **batcher_kwargs).submit(stream.seq)
    return stream.wait()


def test_a_long_prompt_is_prefilled_in_chunks_with_a_decode_step_of_the_running_stream_between_each(make_batcher):
    running_prompt, long_prompt = PROMPTS[1], prompt(60, 600)
    expected = [alone_with(make_batcher, running_prompt, 80, prefill_tokens=64),
                alone_with(make_batcher, long_prompt, 5, prefill_tokens=64)]
    batcher = make_batcher(max_batch=2, prefill_tokens=64)
    batcher.trace = trace = []
    running = Stream("running", running_prompt, 80)
    batcher.submit(running.seq)
    running.wait_tokens(3)
    long = Stream("long", long_prompt, 5)
    batcher.submit(long.seq)
    assert [running.wait(), long.wait()] == expected  # nobody's output changes
    chunks = [i for i, event in enumerate(trace) if event[0] == "prefill" and event[1] == "long"]
    assert [trace[i][2] for i in chunks] == [64] * 9 + [600 - 9 * 64]
    # Between every two chunks of the long prompt the running stream got a decode step.
    for before, after in zip(chunks, chunks[1:]):
        between = [e for e in trace[before + 1:after] if e[0] == "decode"]
        assert len(between) == 1 and "running" in between[0][1]


def prefill_forwards(model) -> tuple[list[int], object]:
    """Count the model's prefill forwards (more than one token per row) and their token counts."""
    seen: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["input_ids"].shape[1]) if kw["input_ids"].shape[1] > 1 else None,
        with_kwargs=True)
    return seen, hook


def submit_together(batcher: ContinuousBatcher, streams) -> None:
    with batcher._cond:  # all of them are waiting when the scheduler next looks
        for stream in streams:
            batcher._waiting.append(stream.seq)
        batcher._cond.notify()


def test_short_prompts_arriving_together_are_prefilled_in_one_packed_forward_with_their_output_alone(
        make_batcher, model):
    chosen = [PROMPTS[i] for i in (0, 1, 3, 4)]  # 5, 17, 40 and 11 tokens
    expected = [alone(make_batcher, p, 12) for p in chosen]
    batcher = make_batcher(max_batch=4, prefill_tokens=256)
    batcher.trace = trace = []
    streams = [Stream(f"s{i}", p, 12) for i, p in enumerate(chosen)]
    forwards, hook = prefill_forwards(model)
    try:
        submit_together(batcher, streams)
        assert [stream.wait() for stream in streams] == expected
    finally:
        hook.remove()
    assert forwards == [5 + 17 + 40 + 11]  # one forward for the four prompts, no padding
    assert batcher.packed_prefills == 1
    assert trace[0] == ("prefill-packed", ["s0", "s1", "s2", "s3"], 73)
    first_decode = next(i for i, e in enumerate(trace) if e[0] == "decode")
    assert trace[first_decode] == ("decode", ["s0", "s1", "s2", "s3"])


def test_prompts_packed_beside_a_chunked_long_prompt_keep_every_output(make_batcher, model):
    long_prompt = prompt(70, 300)
    chosen = [long_prompt, PROMPTS[1], PROMPTS[4], PROMPTS[7]]
    expected = [alone_with(make_batcher, p, 10, prefill_tokens=128) for p in chosen]
    batcher = make_batcher(max_batch=4, prefill_tokens=128)
    batcher.trace = trace = []
    streams = [Stream(f"s{i}", p, 10) for i, p in enumerate(chosen)]
    submit_together(batcher, streams)
    assert [stream.wait() for stream in streams] == expected
    # The long prompt's first chunk takes the round's budget; the short ones are packed in the next.
    packed = [e for e in trace if e[0] == "prefill-packed"]
    assert packed and sorted(packed[0][1]) == ["s1", "s2", "s3"]
    assert [e[2] for e in trace if e[0] == "prefill" and e[1] == "s0"] == [128, 128, 44]


def test_sequences_preempted_under_the_kv_cap_resume_with_their_output_alone(make_batcher):
    prompts = [PROMPTS[i] for i in (0, 1, 4, 7)]  # 5, 17, 11 and 8 tokens
    expected = [alone(make_batcher, p, 40) for p in prompts]
    batcher = make_batcher(max_batch=4, kv_tokens=150)
    batcher.trace = trace = []
    streams = [Stream(f"s{i}", p, 40) for i, p in enumerate(prompts)]
    for stream in streams:
        batcher.submit(stream.seq)
    assert [s.wait() for s in streams] == expected
    assert batcher.preemptions >= 1
    preempted = [e[1] for e in trace if e[0] == "preempt"]
    assert preempted and set(preempted) <= {"s1", "s2", "s3"}  # the newest go first, never the oldest


def test_the_kv_cap_bounds_every_decode_step_and_admits_only_what_fits(make_batcher, model):
    widths = []
    batcher = make_batcher(max_batch=8, kv_tokens=200)
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: widths.append(kw["attention_mask"].shape[0] * kw["attention_mask"].shape[-1])
        if kw.get("attention_mask") is not None else None, with_kwargs=True)
    try:
        streams = [Stream(f"s{i}", p, 30) for i, p in enumerate(PROMPTS)]
        for stream in streams:
            batcher.submit(stream.seq)
        for stream in streams:
            assert len(stream.wait()) == 30
    finally:
        hook.remove()
    assert widths and max(widths) <= 200  # rows × (longest + 1): what the step's attention covers
    assert batcher.largest_batch < 8  # eight rows of up to 70 tokens do not fit 200


def test_a_lone_sequence_longer_than_the_kv_cap_still_finishes(make_batcher):
    expected = alone(make_batcher, PROMPTS[3], 30)
    batcher = make_batcher(max_batch=2, kv_tokens=20)
    stream = Stream("long", PROMPTS[3], 30)
    batcher.submit(stream.seq)
    assert stream.wait() == expected and batcher.preemptions == 0

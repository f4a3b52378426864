"""The OpenAI surface beyond plain chat, with the official `openai` client, on the real SmolLM2 model
through a real daemon: `/v1/completions`, `/v1/models/{id}`, and chat's `n`, `max_completion_tokens`,
`stream_options.include_usage` and `user`."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

# Several choices are several generations: on a loaded CPU a request can take minutes.
pytestmark = pytest.mark.timeout(900)

MODEL = "smollm2-135m-instruct"
# The engine must answer (not the prompt cache): skip the cache and check that it was skipped.
ENGINE = {"Cache-Control": "no-cache"}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(node):
    return openai.OpenAI(base_url=f"{node.base_url}/v1", api_key=node.api_key(), max_retries=0, timeout=600)


def engine_answer(raw):
    assert raw.headers["X-Cache"] == "miss"
    return raw.parse()


# --- /v1/completions --------------------------------------------------------------------------

def test_a_completion_continues_the_prompt_as_text(client):
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, extra_headers=ENGINE)
    completion = engine_answer(raw)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    choice = completion.choices[0]
    assert choice.index == 0 and choice.text.strip() and "Paris" in choice.text
    assert choice.finish_reason in ("stop", "length")
    assert 0 < completion.usage.completion_tokens <= 8
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_a_completion_defaults_to_sixteen_tokens_as_openai_does(client):
    completion = engine_answer(client.completions.with_raw_response.create(
        model=MODEL, prompt="Write a long story about a dragon:", temperature=0, extra_headers=ENGINE))
    assert completion.usage.completion_tokens <= 16


def test_echo_puts_the_prompt_before_the_answer(client):
    prompt = "The capital of France is"
    plain = engine_answer(client.completions.with_raw_response.create(
        model=MODEL, prompt=prompt, max_tokens=6, temperature=0, extra_headers=ENGINE))
    echoed = engine_answer(client.completions.with_raw_response.create(
        model=MODEL, prompt=prompt, max_tokens=6, temperature=0, echo=True, extra_headers=ENGINE))
    assert echoed.choices[0].text == prompt + plain.choices[0].text


def test_a_stop_string_ends_the_completion_before_it(client):
    free = engine_answer(client.completions.with_raw_response.create(
        model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, extra_headers=ENGINE)).choices[0].text
    stop = free.strip()[:1]  # the first character the model writes: surely in what it writes
    assert stop
    stopped = engine_answer(client.completions.with_raw_response.create(
        model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[stop], extra_headers=ENGINE))
    assert stopped.choices[0].finish_reason == "stop"
    assert stop not in stopped.choices[0].text and free.startswith(stopped.choices[0].text)


def test_a_list_of_prompts_with_n_gets_choices_numbered_prompt_by_prompt(client):
    prompts = ["The capital of France is", "The capital of Italy is"]
    completion = engine_answer(client.completions.with_raw_response.create(
        model=MODEL, prompt=prompts, n=2, max_tokens=5, temperature=0, extra_headers=ENGINE))
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    texts = [c.text for c in completion.choices]
    assert texts[0] == texts[1] and texts[2] == texts[3]  # greedy: a prompt's choices agree
    assert texts[0] != texts[2]
    single = engine_answer(client.completions.with_raw_response.create(
        model=MODEL, prompt=prompts[1], max_tokens=5, temperature=0, extra_headers=ENGINE))
    assert texts[2] == single.choices[0].text


def test_a_streamed_completion_equals_the_whole_one_and_ends_with_usage(client):
    whole = engine_answer(client.completions.with_raw_response.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, extra_headers=ENGINE))
    with client.completions.with_streaming_response.create(
            model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_headers=ENGINE) as raw:
        assert raw.headers["X-Cache"] == "miss" and raw.headers["X-Accel-Buffering"] == "no"
        chunks = list(raw.parse())
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_suffix_is_refused_with_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="def add(a, b):", suffix="    return c", max_tokens=4)
    assert info.value.body["param"] == "suffix" and "fill-in-the-middle" in info.value.body["message"]


def test_the_async_client_completes_too(node):
    async def run():
        async with openai.AsyncOpenAI(base_url=f"{node.base_url}/v1", api_key=node.api_key(), max_retries=0,
                                      timeout=120) as client:
            stream = await client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6,
                                                     temperature=0, stream=True, extra_headers=ENGINE)
            return "".join([c.choices[0].text async for c in stream if c.choices])

    assert "Paris" in asyncio.run(run())


# --- chat additions ---------------------------------------------------------------------------

def test_chat_with_n_answers_that_many_choices(client):
    completion = engine_answer(client.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, n=3, max_tokens=6, temperature=1.0, seed=11, extra_headers=ENGINE))
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert all(c.message.content for c in completion.choices)
    # The prompt is read once per request, as OpenAI counts it; every choice's tokens are counted.
    single = engine_answer(client.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, max_tokens=6, temperature=0, extra_headers=ENGINE))
    assert completion.usage.prompt_tokens == single.usage.prompt_tokens
    assert completion.usage.completion_tokens > single.usage.completion_tokens


def test_seeded_choices_are_repeatable(client):
    def texts():
        completion = engine_answer(client.chat.completions.with_raw_response.create(
            model=MODEL, messages=QUESTION, n=2, max_tokens=8, temperature=1.0, seed=5, extra_headers=ENGINE))
        return [c.message.content for c in completion.choices]

    assert texts() == texts()


def test_a_streamed_chat_with_n_interleaves_choices_by_index(client):
    with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=QUESTION, n=2, max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_headers=ENGINE) as raw:
        assert raw.headers["X-Accel-Buffering"] == "no"
        chunks = list(raw.parse())
    texts = {0: "", 1: ""}
    finished = set()
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1} and texts[0] == texts[1] and "Paris" in texts[0]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_max_completion_tokens_caps_the_answer(client):
    completion = engine_answer(client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a long story."}], max_completion_tokens=3,
        temperature=0, user="alice", extra_headers=ENGINE))
    assert completion.usage.completion_tokens == 3 and completion.choices[0].finish_reason == "length"


def test_usage_is_sent_only_when_asked_for(client):
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0, stream=True)
    assert all(chunk.usage is None for chunk in stream)


# --- /v1/models/{id} --------------------------------------------------------------------------

def test_a_model_is_retrieved_by_id_and_by_alias(client):
    assert client.models.retrieve(MODEL).id == MODEL
    by_alias = client.models.retrieve("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert by_alias.id == MODEL and by_alias.object == "model"


def test_an_unknown_model_is_a_404_in_openais_shape(node):
    reply = httpx.get(f"{node.base_url}/v1/models/no-such-model",
                      headers={"Authorization": f"Bearer {node.api_key()}"}, timeout=30)
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "model_not_found"


# --- /v1/embeddings ---------------------------------------------------------------------------

EMBEDDER = "all-minilm-l6-v2"


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b)) / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def test_the_built_in_embedding_model_is_served_next_to_the_chat_model(client):
    ids = {m.id for m in client.models.list()}
    assert {MODEL, EMBEDDER} <= ids
    assert client.models.retrieve("sentence-transformers/all-MiniLM-L6-v2").id == EMBEDDER


def test_embeddings_rank_sentences_by_meaning(client):
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome.",
                 "A man is riding a horse.", "The stock market fell sharply today."]
    result = client.embeddings.create(model=EMBEDDER, input=sentences)  # the client asks for base64
    assert result.model == EMBEDDER and [d.index for d in result.data] == list(range(len(sentences)))
    vectors = [d.embedding for d in result.data]
    assert all(len(v) == 384 for v in vectors)
    assert all(abs(cosine(v, v) - 1) < 1e-4 and abs(sum(x * x for x in v) - 1) < 1e-3 for v in vectors)  # normalised
    query = vectors[0]
    ranked = sorted(range(1, len(sentences)), key=lambda i: -cosine(query, vectors[i]))
    assert ranked[0] == 1  # eating bread is closest to eating food
    assert ranked[-1] in (2, 4)  # a movie or the stock market is farthest
    assert result.usage.prompt_tokens > len(sentences) and result.usage.total_tokens == result.usage.prompt_tokens


def test_float_and_base64_embeddings_are_the_same_vector(node):
    def embed(encoding):
        reply = httpx.post(f"{node.base_url}/v1/embeddings", json={"model": EMBEDDER, "input": "hello world",
                                                                   "encoding_format": encoding},
                           headers={"Authorization": f"Bearer {node.api_key()}"}, timeout=120)
        assert reply.status_code == 200, reply.text
        return reply.json()["data"][0]["embedding"]

    import base64
    import struct

    floats = embed("float")
    packed = base64.b64decode(embed("base64"))
    assert struct.unpack(f"<{len(packed) // 4}f", packed) == pytest.approx(floats, abs=1e-6)


def test_embedding_with_a_chat_model_or_chatting_with_an_embedder_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="hello")
    assert info.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=EMBEDDER, messages=QUESTION, max_tokens=2)
    assert "embedding model" in info.value.body["message"]


def test_an_input_longer_than_the_model_reads_is_refused(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=EMBEDDER, input=["short", "word " * 600])
    assert info.value.body["code"] == "context_length_exceeded" and info.value.body["param"] == "input[1]"


def test_the_openapi_document_lists_every_endpoint(node):
    document = httpx.get(f"{node.base_url}/openapi.json", timeout=30).json()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/models/{model}"):
        assert path in document["paths"]


# --- logprobs ---------------------------------------------------------------------------------

def test_chat_logprobs_come_with_each_token(client):
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=0,
                                                logprobs=True, top_logprobs=2)
    content = completion.choices[0].logprobs.content
    assert "".join(t.token for t in content) == completion.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in content)


def test_streamed_chat_logprobs_ride_with_their_chunks(client):
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=0, stream=True,
                                            logprobs=True)
    text, tokens = "", ""
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs and choice.logprobs.content:
                tokens += "".join(t.token for t in choice.logprobs.content)
    assert text and tokens == text


def test_completion_logprobs_are_in_the_legacy_shape(client):
    completion = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5,
                                           temperature=0, logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert "".join(logprobs.tokens) == completion.choices[0].text
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == len(logprobs.top_logprobs)
    assert all(len(top) <= 2 for top in logprobs.top_logprobs) and logprobs.text_offset[0] == 0

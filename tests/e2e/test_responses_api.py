"""The Responses API with the official `openai` client, sync and async, on the real SmolLM2 model
through a real daemon: create (whole and streamed), retrieve, delete, `previous_response_id`, and a
stored response that only the key that made it can see."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "smollm2-135m-instruct"
ENGINE = {"Cache-Control": "no-cache"}  # the engine must answer, not the prompt cache
QUESTION = "What is the capital of France?"
STREAM_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
                 "response.content_part.added"]
STREAM_END = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


@pytest.fixture(scope="module")
def client(node):
    return openai.OpenAI(base_url=f"{node.base_url}/v1", api_key=node.api_key(), max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def other_client(node):
    """A second key (inference only), made with the admin API."""
    made = httpx.post(f"{node.base_url}/v1/admin/keys", json={"name": "responses-other", "scopes": ["inference"]},
                      headers={"Authorization": f"Bearer {node.api_key()}"}, timeout=30)
    assert made.status_code == 201, made.text
    return openai.OpenAI(base_url=f"{node.base_url}/v1", api_key=made.json()["key"], max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def whole(client):
    raw = client.responses.with_raw_response.create(model=MODEL, input=QUESTION, max_output_tokens=24,
                                                    temperature=0, extra_headers=ENGINE)
    assert raw.headers["X-Cache"] == "miss"
    return raw.parse()


def test_a_response_answers_the_question(whole):
    assert whole.object == "response" and whole.id.startswith("resp_") and whole.model
    assert whole.status in ("completed", "incomplete") and "Paris" in whole.output_text
    (message,) = whole.output
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text" and message.content[0].text == whole.output_text
    assert 0 < whole.usage.output_tokens <= 24 and whole.usage.input_tokens > 0
    assert whole.usage.total_tokens == whole.usage.input_tokens + whole.usage.output_tokens


def test_max_output_tokens_cuts_the_answer_and_says_so(client):
    raw = client.responses.with_raw_response.create(model=MODEL, input="Write a long story about a dragon.",
                                                    max_output_tokens=3, temperature=0, extra_headers=ENGINE)
    assert raw.headers["X-Cache"] == "miss"
    cut = raw.parse()
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage.output_tokens == 3


def test_instructions_are_the_system_message_of_the_same_chat(client):
    system = "You are a pirate. Always answer like a pirate."
    instructed = client.responses.with_raw_response.create(
        model=MODEL, input=QUESTION, instructions=system, max_output_tokens=24, temperature=0, extra_headers=ENGINE)
    assert instructed.headers["X-Cache"] == "miss"
    answer = instructed.parse()
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": system}, {"role": "user", "content": QUESTION}],
        max_completion_tokens=24, temperature=0, extra_headers=ENGINE)
    assert answer.instructions == system
    assert answer.output_text == chat.choices[0].message.content
    assert answer.usage.input_tokens == chat.usage.prompt_tokens


def test_a_streamed_response_is_the_typed_events_of_the_same_answer(client, whole):
    with client.responses.with_streaming_response.create(
            model=MODEL, input=QUESTION, max_output_tokens=24, temperature=0, stream=True,
            extra_headers=ENGINE) as raw:
        assert raw.headers["X-Cache"] == "miss" and raw.headers["X-Accel-Buffering"] == "no"
        events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[:4] == STREAM_EVENTS and kinds[-4:-1] == STREAM_END
    assert kinds[-1] == f"response.{whole.status}" and set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text == events[-4].text
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens == whole.usage.output_tokens
    assert client.responses.retrieve(final.id).output_text == text  # stored by the time the stream ends


def test_a_stored_response_is_retrieved_and_deleted(client, whole):
    again = client.responses.retrieve(whole.id)
    assert again.id == whole.id and again.output_text == whole.output_text and again.usage == whole.usage
    made = client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=4, extra_headers=ENGINE)
    assert client.responses.delete(made.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(made.id)
    unstored = client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=4, store=False,
                                       extra_headers=ENGINE)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_previous_response_id_continues_the_conversation(client):
    first = client.responses.create(model=MODEL, input="My name is Zorblax. Please remember my name.",
                                    max_output_tokens=16, temperature=0, extra_headers=ENGINE)
    follow = client.responses.with_raw_response.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id, max_output_tokens=16,
        temperature=0, extra_headers=ENGINE)
    assert follow.headers["X-Cache"] == "miss"
    follow = follow.parse()
    assert follow.previous_response_id == first.id
    # The model read the first turn (its question and its answer) before this input: the same as a chat of
    # those three messages, token for token.
    chat = client.chat.completions.create(model=MODEL, messages=[
        {"role": "user", "content": "My name is Zorblax. Please remember my name."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"}], max_completion_tokens=16, temperature=0, extra_headers=ENGINE)
    assert follow.usage.input_tokens == chat.usage.prompt_tokens
    assert follow.output_text == chat.choices[0].message.content
    # A chain: the third turn reads both earlier ones.
    third = client.responses.create(model=MODEL, input="Thank you.", previous_response_id=follow.id,
                                    max_output_tokens=4, extra_headers=ENGINE)
    assert third.usage.input_tokens > follow.usage.input_tokens + follow.usage.output_tokens


def test_another_key_is_told_a_stored_response_does_not_exist(client, other_client, whole):
    with pytest.raises(openai.NotFoundError) as refused:
        other_client.responses.retrieve(whole.id)
    assert refused.value.body["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        other_client.responses.delete(whole.id)
    with pytest.raises(openai.NotFoundError) as continued:
        other_client.responses.create(model=MODEL, input="Go on.", previous_response_id=whole.id)
    assert continued.value.body["param"] == "previous_response_id"
    assert client.responses.retrieve(whole.id).id == whole.id  # still there for its own key


def test_unsupported_parameters_are_refused_naming_them(client):
    with pytest.raises(openai.BadRequestError) as tools:
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    assert tools.value.body["param"] == "tools"
    with pytest.raises(openai.BadRequestError) as image:
        client.responses.create(model=MODEL, input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.com/cat.png"}]}])
    assert image.value.body["param"] == "input[0].content[0].type"


def test_the_async_client_creates_streams_retrieves_and_deletes(node, whole):
    async def run():
        async with openai.AsyncOpenAI(base_url=f"{node.base_url}/v1", api_key=node.api_key(), max_retries=0,
                                      timeout=600) as client:
            made = await client.responses.with_raw_response.create(
                model=MODEL, input=[{"role": "user", "content": QUESTION}], max_output_tokens=24, temperature=0,
                extra_headers=ENGINE)
            assert made.headers["X-Cache"] == "miss"
            made = made.parse()
            # The SDK's own stream helper accumulates the events into the final response.
            async with client.responses.stream(model=MODEL, input=QUESTION, max_output_tokens=24, temperature=0,
                                               extra_headers=ENGINE) as stream:
                deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
                final = await stream.get_final_response()
            got = await client.responses.retrieve(final.id)
            await client.responses.delete(final.id)
            try:
                await client.responses.retrieve(final.id)
                gone = False
            except openai.NotFoundError:
                gone = True
            return made, deltas, final, got, gone

    made, deltas, final, got, gone = asyncio.run(run())
    assert made.output_text == whole.output_text  # the same greedy answer, from a message list
    assert "".join(deltas) == final.output_text == whole.output_text == got.output_text
    assert gone

"""The JSON an OpenAI client receives from the gateway, shape for shape."""

from __future__ import annotations

import json

import pytest

from cynode.errors import AuthError, QueueFullError, RequestError
from cynode.openai_errors import error_body, error_type_for_status, response_for
from cynode.roles.gateway.openai_format import (
    SSE_DONE,
    ChunkEncoder,
    chat_completion,
    completion_id,
    model_list,
    sse_event,
    usage_dict,
)


def chunk(event: bytes) -> dict:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    return json.loads(event[len(b"data: "):])


def test_an_error_body_has_openais_four_fields():
    assert error_body("temperature must be between 0 and 2; got 3.5", param="temperature") == {
        "error": {"message": "temperature must be between 0 and 2; got 3.5", "type": "invalid_request_error",
                  "param": "temperature", "code": None},
    }


def test_an_error_body_carries_a_type_and_code_when_given():
    body = error_body("Incorrect API key provided: sk-cyno...abcd.", status=401, code="invalid_api_key")
    assert body["error"]["type"] == "authentication_error" and body["error"]["code"] == "invalid_api_key"


def test_a_cynode_error_answers_with_its_status_code_and_param():
    reply = response_for(RequestError("the prompt is too long", param="messages", code="context_length_exceeded"))
    assert reply.status == 400
    assert json.loads(reply.body)["error"] == {"message": "the prompt is too long", "type": "invalid_request_error",
                                               "param": "messages", "code": "context_length_exceeded"}
    full = response_for(QueueFullError(12, retry_after=7))
    assert full.status == 429 and full.headers["Retry-After"] == "7"
    assert json.loads(full.body)["error"]["code"] == "queue_full"
    assert response_for(AuthError("no", status=403, code="model_not_allowed")).status == 403


@pytest.mark.parametrize("status, kind", [
    (400, "invalid_request_error"), (404, "invalid_request_error"), (413, "invalid_request_error"),
    (422, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (429, "rate_limit_error"), (500, "server_error"), (502, "server_error"),
    (503, "service_unavailable_error"),
])
def test_each_status_maps_to_the_error_type_openai_uses(status, kind):
    assert error_type_for_status(status) == kind


def test_completion_ids_look_like_openais_and_do_not_repeat():
    ids = {completion_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("chatcmpl-") and int(i.removeprefix("chatcmpl-"), 16) >= 0 for i in ids)


def test_usage_counts_add_up():
    assert usage_dict(12, 30) == {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}


def test_a_whole_completion_has_one_assistant_choice_and_usage():
    body = chat_completion("chatcmpl-1", "smollm2", 1700000000, "Hello!", "stop", usage_dict(5, 2))
    assert body == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "smollm2",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def test_the_first_chunk_announces_the_assistant_role():
    first = chunk(ChunkEncoder("chatcmpl-1", "smollm2", 1, include_usage=False).role())
    assert first == {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "smollm2",
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None}]}


def test_a_content_chunk_carries_only_the_content_and_a_null_finish_reason():
    choice = chunk(ChunkEncoder("c", "m", 1, include_usage=False).content('He said "hi"\n'))["choices"][0]
    assert choice["delta"] == {"content": 'He said "hi"\n'} and choice["finish_reason"] is None


def test_the_last_chunk_has_an_empty_delta_and_the_finish_reason():
    choice = chunk(ChunkEncoder("c", "m", 1, include_usage=False).finish("length"))["choices"][0]
    assert choice["delta"] == {} and choice["finish_reason"] == "length"


def test_chunks_have_no_usage_key_unless_the_client_asked_for_usage():
    assert "usage" not in chunk(ChunkEncoder("c", "m", 1, include_usage=False).content("x"))
    with_usage = ChunkEncoder("c", "m", 1, include_usage=True)
    for event in (with_usage.role(), with_usage.content("x"), with_usage.finish("stop")):
        assert "usage" in chunk(event) and chunk(event)["usage"] is None


def test_the_usage_chunk_has_no_choices_and_the_counts():
    last = chunk(ChunkEncoder("c", "m", 1, include_usage=True).usage(3, 4))
    assert last["object"] == "chat.completion.chunk" and last["choices"] == []
    assert last["usage"] == usage_dict(3, 4) and last["id"] == "c" and last["model"] == "m"


def test_a_lone_surrogate_in_a_token_does_not_break_the_stream():
    assert chunk(ChunkEncoder("c", "m", 1, include_usage=False).content("a\ud800b"))["choices"][0]["delta"] == {"content": "a?b"}


def test_the_model_list_matches_get_v1_models():
    assert model_list([("smollm2", "cynode"), ("qwen", "edge-01")], 1700000000) == {
        "object": "list",
        "data": [
            {"id": "smollm2", "object": "model", "created": 1700000000, "owned_by": "cynode"},
            {"id": "qwen", "object": "model", "created": 1700000000, "owned_by": "edge-01"},
        ],
    }


def test_an_empty_model_list_is_still_a_list():
    assert model_list([], 0) == {"object": "list", "data": []}


def test_an_sse_event_is_one_compact_data_line():
    event = sse_event({"a": 1, "b": [1, 2]})
    assert event == b'data: {"a":1,"b":[1,2]}\n\n'


def test_sse_events_keep_text_as_utf8_and_escape_newlines():
    event = sse_event({"content": "你好\nworld"})
    assert event.count(b"\n") == 2 and event.endswith(b"\n\n")
    assert json.loads(event[len(b"data: "):]) == {"content": "你好\nworld"}
    assert "你好".encode() in event


def test_a_lone_surrogate_does_not_break_the_stream():
    assert sse_event({"content": "a\ud800b"}).startswith(b'data: {"content":"a')


def test_the_stream_ends_with_done():
    assert SSE_DONE == b"data: [DONE]\n\n"

"""What a client sees when it posts a chat completion body: a parsed request or a precise 400."""

from __future__ import annotations

import json

import pytest

from cynode.errors import RequestError
from cynode.inference import ChatMessage as Message
from cynode.roles.gateway.openai_schema import ChatCompletionRequest, parse_chat_request
from cynode.sampling import SamplingParams as Sampling


def body(**fields) -> bytes:
    base = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def refused(raw: bytes) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_chat_request(raw)
    assert info.value.status == 400
    return info.value


# --- a good request ---------------------------------------------------------------------------

def test_a_minimal_request_parses_with_defaults():
    request = parse_chat_request(body())
    assert request == ChatCompletionRequest(
        model="smollm2", messages=(Message("user", "Hi"),), stream=False, include_usage=False,
        sampling=Sampling(), user=None,
    )


def test_every_sampling_parameter_is_carried_into_the_request():
    request = parse_chat_request(body(
        temperature=0.7, top_p=0.9, top_k=40, max_tokens=64, stop=["\n\n", "END"], seed=42,
        presence_penalty=-1.5, frequency_penalty=2, repetition_penalty=1.1, user="alice",
    ))
    assert request.sampling == Sampling(
        temperature=0.7, top_p=0.9, top_k=40, max_tokens=64, stop=("\n\n", "END"), seed=42,
        presence_penalty=-1.5, frequency_penalty=2.0, repetition_penalty=1.1,
    )
    assert request.user == "alice"


def test_the_parsed_request_is_frozen():
    request = parse_chat_request(body())
    with pytest.raises(AttributeError):
        request.model = "other"  # type: ignore[misc]


def test_null_means_not_given_for_optional_parameters():
    request = parse_chat_request(body(temperature=None, stop=None, stream=None, n=None, user=None))
    assert request.sampling == Sampling() and request.stream is False


def test_unknown_fields_and_default_valued_extras_are_ignored():
    request = parse_chat_request(body(metadata={"a": "b"}, logprobs=False, tools=[], tool_choice="auto",
                                      response_format={"type": "text"}, store=False, n=1, future_field=3))
    assert request.model == "smollm2"


def test_all_roles_are_accepted():
    messages = [{"role": r, "content": r, **({"tool_call_id": "call_1"} if r == "tool" else {})}
                for r in ("system", "developer", "user", "assistant", "tool")]
    request = parse_chat_request(body(messages=messages))
    assert [m.role for m in request.messages] == ["system", "developer", "user", "assistant", "tool"]


def test_text_content_parts_are_joined_into_one_string():
    parts = [{"type": "text", "text": "Describe"}, {"type": "text", "text": "this."}]
    request = parse_chat_request(body(messages=[{"role": "user", "content": parts}]))
    assert request.messages[0].content == "Describe\nthis."


def test_a_single_stop_string_becomes_a_one_item_tuple():
    assert parse_chat_request(body(stop="###")).sampling.stop == ("###",)


def test_max_completion_tokens_wins_over_max_tokens():
    assert parse_chat_request(body(max_tokens=10, max_completion_tokens=20)).sampling.max_tokens == 20
    assert parse_chat_request(body(max_completion_tokens=5)).sampling.max_tokens == 5


def test_streaming_with_usage_is_recorded():
    request = parse_chat_request(body(stream=True, stream_options={"include_usage": True}))
    assert request.stream is True and request.include_usage is True


def test_integers_are_accepted_where_numbers_are_expected():
    assert parse_chat_request(body(temperature=1)).sampling.temperature == 1.0


# --- the body itself --------------------------------------------------------------------------

def test_a_body_that_is_not_json_is_refused_with_the_reason():
    error = refused(b'{"model": "x",')
    assert error.message.startswith("Invalid JSON body: ") and error.code == "invalid_json"


def test_an_empty_body_is_refused_as_invalid_json():
    error = refused(b"")
    assert "Invalid JSON body" in error.message and error.code == "invalid_json"


def test_nan_is_not_json():
    error = refused(b'{"model": "x", "messages": [], "temperature": NaN}')
    assert error.code == "invalid_json" and "NaN" in error.message


def test_a_body_that_is_not_utf8_is_refused_as_invalid_json():
    assert refused(b'{"model": "\xff"}').code == "invalid_json"


def test_a_json_array_body_is_refused():
    error = refused(b"[1, 2]")
    assert "must be a JSON object" in error.message and "array" in error.message


# --- model and messages -----------------------------------------------------------------------

@pytest.mark.parametrize("value, says", [(..., "'model' is required"), (3, "model must be a string"),
                                         ("  ", "model must not be empty")])
def test_model_must_be_a_non_empty_string(value, says):
    error = refused(body(model=value))
    assert says in error.message and error.param == "model"


def test_messages_are_required():
    error = refused(body(messages=...))
    assert error.message == "'messages' is required" and error.param == "messages"


def test_messages_must_not_be_empty():
    error = refused(body(messages=[]))
    assert "at least one message" in error.message and error.param == "messages"


def test_messages_must_be_an_array():
    assert "must be an array" in refused(body(messages={"role": "user"})).message


def test_each_message_must_be_an_object():
    error = refused(body(messages=[{"role": "user", "content": "a"}, "hello"]))
    assert error.param == "messages[1]" and "must be an object" in error.message


def test_an_unknown_role_is_named_with_the_allowed_ones():
    error = refused(body(messages=[{"role": "robot", "content": "beep"}]))
    assert error.message == "messages[0].role must be one of system, user, assistant, tool, developer; got 'robot'"
    assert error.param == "messages[0].role"


def test_a_missing_role_is_named():
    assert refused(body(messages=[{"content": "x"}])).param == "messages[0].role"


def test_missing_content_is_named_with_its_path():
    error = refused(body(messages=[{"role": "system", "content": "s"}, {"role": "user"}]))
    assert error.param == "messages[1].content" and "required" in error.message


def test_content_of_the_wrong_type_is_refused():
    error = refused(body(messages=[{"role": "user", "content": 42}]))
    assert error.param == "messages[0].content" and "a string or an array" in error.message


def test_an_image_part_is_refused_naming_its_type():
    parts = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "x"}}]
    error = refused(body(messages=[{"role": "user", "content": parts}]))
    assert error.param == "messages[0].content[1].type"
    assert "'image_url' is not supported" in error.message


def test_a_text_part_without_text_is_refused():
    error = refused(body(messages=[{"role": "user", "content": [{"type": "text"}]}]))
    assert error.param == "messages[0].content[0].text"


def test_an_empty_content_part_list_is_refused():
    assert refused(body(messages=[{"role": "user", "content": []}])).param == "messages[0].content"


def test_a_tool_call_in_a_message_without_a_function_names_the_field():
    message = {"role": "assistant", "content": "", "tool_calls": [{"id": "1", "type": "function"}]}
    error = refused(body(messages=[message]))
    assert error.param == "messages[0].tool_calls[0].function"


# --- streaming --------------------------------------------------------------------------------

def test_stream_must_be_a_boolean():
    error = refused(body(stream="yes"))
    assert error.param == "stream" and "must be a boolean" in error.message


def test_stream_options_without_streaming_are_refused_like_openai_does():
    error = refused(body(stream_options={"include_usage": True}))
    assert error.param == "stream_options" and "only allowed when stream is true" in error.message


def test_include_usage_must_be_a_boolean():
    error = refused(body(stream=True, stream_options={"include_usage": 1}))
    assert error.param == "stream_options.include_usage"


# --- sampling ranges --------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, says", [
    ("temperature", 3.5, "temperature must be between 0 and 2; got 3.5"),
    ("temperature", -0.1, "temperature must be between 0 and 2; got -0.1"),
    ("top_p", 0, "top_p must be greater than 0 and at most 1; got 0"),
    ("top_p", 1.5, "top_p must be greater than 0 and at most 1; got 1.5"),
    ("top_k", -1, "top_k must be at least 0; got -1"),
    ("max_tokens", 0, "max_tokens must be at least 1; got 0"),
    ("max_completion_tokens", -5, "max_completion_tokens must be at least 1; got -5"),
    ("presence_penalty", 2.5, "presence_penalty must be between -2 and 2; got 2.5"),
    ("frequency_penalty", -3, "frequency_penalty must be between -2 and 2; got -3"),
    ("repetition_penalty", 0, "repetition_penalty must be greater than 0; got 0"),
    ("seed", 2**64, "seed must be between"),
])
def test_out_of_range_values_are_refused_with_the_allowed_range(field, value, says):
    error = refused(body(**{field: value}))
    assert error.message.startswith(says) and error.param == field


@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty", "frequency_penalty",
                                   "repetition_penalty"])
def test_booleans_are_not_numbers(field):
    error = refused(body(**{field: True}))
    assert error.message == f"{field} must be a number; got true" and error.param == field


@pytest.mark.parametrize("field", ["top_k", "max_tokens", "max_completion_tokens", "seed"])
def test_integer_parameters_refuse_fractions_strings_and_booleans(field):
    for value in (1.5, "10", True):
        error = refused(body(**{field: value}))
        assert "must be an integer" in error.message and error.param == field


def test_an_infinite_number_is_refused():
    raw = b'{"model": "x", "messages": [{"role": "user", "content": "a"}], "repetition_penalty": 1e400}'
    assert refused(raw).param == "repetition_penalty"


def test_a_string_temperature_is_refused_showing_the_value():
    assert refused(body(temperature="hot")).message == "temperature must be a number; got 'hot'"


# --- stop -------------------------------------------------------------------------------------

def test_more_than_four_stop_sequences_are_refused():
    error = refused(body(stop=["a", "b", "c", "d", "e"]))
    assert error.param == "stop" and "at most 4" in error.message


def test_a_non_string_stop_item_is_named():
    assert refused(body(stop=["a", 3])).param == "stop[1]"


def test_an_empty_stop_string_is_refused():
    assert "must not be an empty string" in refused(body(stop="")).message


def test_stop_of_the_wrong_type_is_refused():
    assert refused(body(stop={"a": 1})).param == "stop"


# --- choices -------------------------------------------------------------------------------------

def test_n_asks_for_that_many_choices():
    assert parse_chat_request(body(n=3)).n == 3


@pytest.mark.parametrize("n, code", [(0, "invalid_value"), (17, "invalid_value"), (True, "invalid_type"),
                                     ("1", "invalid_type"), (1.5, "invalid_type")])
def test_n_outside_one_to_sixteen_is_refused(n, code):
    error = refused(body(n=n))
    assert error.param == "n" and error.code == code


# --- things we do not do yet ------------------------------------------------------------------


def test_logprobs_ask_for_the_top_alternatives_or_none():
    assert parse_chat_request(body(logprobs=True, top_logprobs=3)).sampling.logprobs == 3
    assert parse_chat_request(body(logprobs=True)).sampling.logprobs == 0
    assert parse_chat_request(body(logprobs=False)).sampling.logprobs is None


@pytest.mark.parametrize("fields, param", [({"top_logprobs": 2}, "top_logprobs"),
                                           ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                                           ({"logprobs": 1}, "logprobs")])
def test_bad_logprobs_are_refused(fields, param):
    assert refused(body(**fields)).param == param


@pytest.mark.parametrize("field, value", [
    ("logit_bias", {"50256": -100}),
])
def test_unsupported_features_are_refused_rather_than_ignored(field, value):
    error = refused(body(**{field: value}))
    assert error.param == field and "is not supported yet" in error.message and field in error.message


def test_user_must_be_a_string():
    assert refused(body(user=5)).param == "user"

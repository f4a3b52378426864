"""What a client sees when it posts a `/v1/completions` body: a parsed request or a precise 400."""

from __future__ import annotations

import json

import pytest

from cynode.errors import RequestError
from cynode.roles.gateway.openai_schema import MAX_CHOICES, parse_completion_request


def body(**fields) -> bytes:
    base = {"model": "smollm2", "prompt": "Once upon a time"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def refused(raw: bytes) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_completion_request(raw)
    assert info.value.status == 400
    return info.value


def test_a_string_prompt_is_one_prompt_with_openais_default_of_16_tokens():
    request = parse_completion_request(body())
    assert request.prompts == ("Once upon a time",)
    assert request.sampling.max_tokens == 16 and request.n == 1 and not request.echo and not request.stream


def test_a_list_of_prompts_and_sampling_parameters_are_carried():
    request = parse_completion_request(body(prompt=["a", "b"], max_tokens=5, stop=["\n"], temperature=0, echo=True,
                                            n=2, seed=7))
    assert request.prompts == ("a", "b") and request.n == 2 and request.echo
    assert request.sampling.max_tokens == 5 and request.sampling.stop == ("\n",) and request.sampling.seed == 7


def test_a_missing_prompt_is_refused():
    assert refused(body(prompt=...)).code == "missing_required_parameter"


@pytest.mark.parametrize("prompt, param", [([1, 2, 3], "prompt[0]"), ([[1, 2]], "prompt[0]")])
def test_token_id_prompts_are_refused_naming_the_item(prompt, param):
    error = refused(body(prompt=prompt))
    assert error.param == param and "token ids" in error.message


@pytest.mark.parametrize("prompt, code", [("", "invalid_value"), ([], "empty_array"), (5, "invalid_type"),
                                          (["ok", None], "invalid_type")])
def test_bad_prompts_are_refused(prompt, code):
    assert refused(body(prompt=prompt)).code == code


def test_more_choices_than_the_limit_are_refused():
    error = refused(body(prompt=["a", "b", "c"], n=MAX_CHOICES))
    assert error.param == "n" and "for 3 prompts" in error.message


def test_a_suffix_is_refused_clearly_rather_than_ignored():
    error = refused(body(suffix="return x"))
    assert error.param == "suffix" and error.code == "unsupported_parameter"
    assert "fill-in-the-middle" in error.message


def test_an_empty_or_null_suffix_is_no_suffix():
    assert parse_completion_request(body(suffix="")).prompts == ("Once upon a time",)
    assert parse_completion_request(body(suffix=None)).prompts == ("Once upon a time",)


def test_best_of_other_than_n_is_refused():
    assert parse_completion_request(body(best_of=1)).n == 1
    assert refused(body(best_of=3)).param == "best_of"


def test_stream_options_need_stream():
    assert refused(body(stream_options={"include_usage": True})).param == "stream_options"
    assert parse_completion_request(body(stream=True, stream_options={"include_usage": True})).include_usage


def test_logprobs_ask_for_that_many_alternatives_but_not_with_echo():
    assert parse_completion_request(body(logprobs=2)).sampling.logprobs == 2
    assert parse_completion_request(body(logprobs=0)).sampling.logprobs == 0
    assert parse_completion_request(body()).sampling.logprobs is None
    assert refused(body(logprobs=2, echo=True)).code == "unsupported_parameter"
    assert refused(body(logprobs=25)).param == "logprobs"


def test_logit_bias_is_refused_rather_than_ignored():
    assert refused(body(logit_bias={"1": 5})).param == "logit_bias"


# --- /v1/embeddings -----------------------------------------------------------------------------

from cynode.roles.gateway.openai_schema import MAX_EMBEDDING_INPUTS, parse_embedding_request  # noqa: E402


def embedding_refused(**fields) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_embedding_request(json.dumps({"model": "m", **fields}).encode())
    assert info.value.status == 400
    return info.value


def test_an_embeddings_body_takes_one_text_or_many():
    one = parse_embedding_request(b'{"model": "m", "input": "hello"}')
    assert one.inputs == ("hello",) and one.encoding_format == "float" and one.dimensions is None
    many = parse_embedding_request(b'{"model": "m", "input": ["a", "b"], "encoding_format": "base64"}')
    assert many.inputs == ("a", "b") and many.encoding_format == "base64"


@pytest.mark.parametrize("value, param", [([1, 2], "input[0]"), ([""], "input[0]"), ("", "input"), ([], "input"),
                                          (["a", 3.5], "input[1]"), ({"a": 1}, "input")])
def test_bad_embedding_inputs_are_refused_naming_the_item(value, param):
    assert embedding_refused(input=value).param == param


def test_too_many_embedding_inputs_are_refused():
    assert embedding_refused(input=["x"] * (MAX_EMBEDDING_INPUTS + 1)).param == "input"


def test_an_unknown_encoding_format_or_bad_dimensions_are_refused():
    assert embedding_refused(input="x", encoding_format="int8").param == "encoding_format"
    assert embedding_refused(input="x", dimensions=0).param == "dimensions"

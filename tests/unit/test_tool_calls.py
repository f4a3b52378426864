"""Reading tool calls out of an answer (roles/gateway/tool_calls.py), whole and piece by piece."""

from __future__ import annotations

import json

import pytest

from cynode.roles.gateway.tool_calls import ToolCallParser, parse_answer

NAMES = ("get_weather", "get_time")
CALL = '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>'


def streamed(text: str, size: int, parallel: bool = True):
    parser = ToolCallParser(NAMES, parallel=parallel)
    content, calls = [], []
    for i in range(0, len(text), size):
        piece, got = parser.feed(text[i:i + size])
        content.append(piece)
        calls += got
    piece, got = parser.finish()
    return "".join(content) + piece, calls + got


def test_an_answer_that_is_one_call_has_no_content_and_that_call():
    parsed = parse_answer(CALL, NAMES)
    assert parsed.content is None
    [call] = parsed.calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")


def test_text_before_a_call_is_content():
    parsed = parse_answer("Let me check.\n" + CALL, NAMES)
    assert parsed.content == "Let me check." and len(parsed.calls) == 1


def test_an_answer_without_calls_is_its_text_unchanged():
    assert parse_answer("  Paris is sunny.\n", NAMES).content == "  Paris is sunny.\n"
    assert parse_answer("", NAMES).content == ""


def test_a_block_naming_an_unknown_function_or_broken_json_stays_content():
    unknown = '<tool_call>\n{"name":"rm_rf","arguments":{}}\n</tool_call>'
    broken = '<tool_call>\n{"name":"get_weather","arguments":{"city":\n</tool_call>'
    for text in (unknown, broken, '<tool_call>{"name":"get_weather","arguments":"x"}</tool_call>'):
        parsed = parse_answer(text, NAMES)
        assert parsed.calls == [] and parsed.content == text


def test_several_calls_are_all_read_unless_parallel_calls_are_off():
    two = CALL + "\n" + CALL.replace("get_weather", "get_time")
    assert [c.name for c in parse_answer(two, NAMES).calls] == ["get_weather", "get_time"]
    assert [c.name for c in parse_answer(two, NAMES, parallel=False).calls] == ["get_weather"]


def test_a_call_cut_before_its_closing_tag_is_still_a_call_when_its_json_is_whole():
    assert len(parse_answer(CALL.removesuffix("\n</tool_call>"), NAMES).calls) == 1
    cut = CALL[:30]
    assert parse_answer(cut, NAMES).content == cut


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_streamed_pieces_of_any_size_give_what_the_whole_answer_gives(size):
    text = "Checking.\n" + CALL + "\n" + CALL.replace("Paris", "Rome")
    content, calls = streamed(text, size)
    whole = parse_answer(text, NAMES)
    assert content.strip() == whole.content
    assert [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in whole.calls]


def test_a_streamed_less_than_sign_is_held_only_while_it_may_open_a_tag():
    parser = ToolCallParser(NAMES)
    assert parser.feed("a <") == ("a ", [])
    assert parser.feed("b") == ("<b", [])
    assert parser.feed("<tool") == ("", [])
    assert parser.finish() == ("<tool", [])

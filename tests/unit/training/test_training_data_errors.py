"""Every kind of bad row or file is one DatasetError naming the file, the row, the field and what the
format expects, found without a model (check_files) so a job fails before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cynode.engines.training.data import SampleTokenizer, check_files, iter_samples
from cynode.errors import DatasetError, RequestError
from training_testkit import write_jsonl

GOOD_CHAT = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}

CASES = [
    # (name, rows, format or None, bad row, field, words in `expected`)
    ("text missing", [{"text": "ok"}, {"text": None}], "text", 2, "text", '{"text"'),
    ("text not a string", [{"text": 5}], "text", 1, "text", "a string"),
    ("alpaca output missing", [{"instruction": "i", "output": "o"}, {"instruction": "i"}], "alpaca", 2, "output",
     '"output"'),
    ("alpaca empty instruction", [{"instruction": " ", "output": "o"}], "alpaca", 1, "instruction", "non-empty"),
    ("sharegpt unknown speaker", [{"conversations": [{"from": "robot", "value": "x"}]}], "sharegpt", 1,
     "conversations[0].from", "gpt"),
    ("sharegpt value not text", [{"conversations": [{"from": "human", "value": ["x"]}]}], "sharegpt", 1,
     "conversations[0].value", "a string"),
    ("sharegpt not a list", [{"conversations": "hi"}], "sharegpt", 1, "conversations", "a list"),
    ("messages bad role", [GOOD_CHAT, {"messages": [{"role": "wizard", "content": "x"}]}], None, 2,
     "messages[0].role", "assistant"),
    ("messages content missing", [{"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]}],
     "messages", 1, "messages[0].content", "a string"),
    ("messages bad weight", [{"messages": [{"role": "user", "content": "a"},
                                           {"role": "assistant", "content": "b", "weight": 2}]}], "messages", 1,
     "messages[1].weight", "0 or 1"),
    ("messages nothing to train", [{"messages": [{"role": "user", "content": "a"}]}], "messages", 1, "messages",
     "assistant message"),
    ("messages tool calls", [{"messages": [{"role": "user", "content": "a"},
                                           {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]}],
     "messages", 1, "messages[1].tool_calls", "text content"),
    ("messages image part", [{"messages": [{"role": "user", "content": [{"type": "image_url"}]},
                                           {"role": "assistant", "content": "b"}]}], "messages", 1,
     "messages[0].content[0]", '"type": "text"'),
    ("prompt_completion no completion", [{"prompt": "p", "completion": ""}], "prompt_completion", 1, "completion",
     "non-empty"),
    ("segments label not bool", [{"segments": [{"text": "a", "label": "yes"}]}], "segments", 1, "segments[0].label",
     "true or false"),
    ("segments nothing labelled", [{"segments": [{"text": "a", "label": False}]}], "segments", 1, "segments",
     '"label"'),
    ("tokenized negative id", [{"input_ids": [1, -2]}], "tokenized", 1, "input_ids[1]", "non-negative"),
    ("tokenized labels length", [{"input_ids": [1, 2], "labels": [1]}], "tokenized", 1, "labels",
     "one label per input id"),
    ("tokenized shifted labels", [{"input_ids": [1, 2], "labels": [2, -100]}], "tokenized", 1, "labels[0]",
     "not shifted"),
    ("preference rejected missing", [{"prompt": "p", "chosen": "a"}], "preference", 1, "rejected", '"rejected"'),
    ("preference chosen not assistant", [{"prompt": [{"role": "user", "content": "p"}],
                                          "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}],
     "preference", 1, "chosen", "assistant messages"),
    ("no format matches", [{"question": "q", "answer": "a"}], None, 1, None, "instruction"),
    ("a later row in another shape", [GOOD_CHAT, GOOD_CHAT, {"text": "t"}], None, 3, "messages", '"messages"'),
]


@pytest.mark.parametrize("name, rows, fmt, row, field, expected", CASES, ids=[c[0] for c in CASES])
def test_a_bad_row_names_file_row_field_and_expected_format(tmp_path, name, rows, fmt, row, field, expected):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DatasetError) as info:
        check_files([str(path)], fmt, method="dpo" if fmt == "preference" else "supervised")
    err = info.value
    assert (err.file, err.row, err.field) == (str(path), row, field)
    assert expected in err.expected
    assert err.message.startswith(f"{path}: row {row}")
    if field:
        assert f"field {field!r}" in err.message
    assert isinstance(err, RequestError) and err.status == 400 and err.code == "invalid_training_file"


def test_invalid_json_on_a_line_names_that_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n\n{\"text\": oops}\n")
    with pytest.raises(DatasetError) as info:
        check_files([str(path)])
    assert (info.value.row, info.value.expected) == (3, "one JSON object per line")
    assert "not valid JSON" in info.value.message


def test_a_row_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(DatasetError) as info:
        check_files([str(path)])
    assert info.value.row == 2 and "is a list, not an object" in info.value.message


@pytest.mark.parametrize("setup, words", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_text(""), "has no rows"),
    (lambda p: p.write_text("{not json"), "not valid JSON"),
    (lambda p: p.write_bytes(b"\xff\xfe{\"text\": 1}\n"), "not UTF-8"),
])
def test_unreadable_files_are_named(tmp_path, setup, words):
    path = tmp_path / "data.jsonl"
    setup(path)
    with pytest.raises(DatasetError) as info:
        check_files([str(path)])
    assert info.value.file == str(path) and words in info.value.message


def test_a_csv_row_with_too_many_cells_is_named(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text\nfine\n\"a\",\"b\"\n")
    with pytest.raises(DatasetError) as info:
        check_files([str(path)])
    assert info.value.row == 2 and "cells" in info.value.message


def test_a_broken_parquet_file_is_named(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DatasetError) as info:
        check_files([str(path)])
    assert "not a readable Parquet file" in info.value.message


def test_the_method_must_fit_the_format(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [GOOD_CHAT])
    with pytest.raises(DatasetError) as info:
        check_files([str(chat)], method="dpo")
    assert info.value.row == 1 and "DPO trains on pairs" in info.value.message
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DatasetError, match="trains with method dpo"):
        check_files([str(pairs)], method="supervised")


def test_a_token_id_outside_the_vocabulary_is_found_when_tokenizing(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "k.jsonl", [{"input_ids": [1, 2]}, {"input_ids": [1, 10_000_000]}])
    samples = list(iter_samples([str(path)]))  # structurally fine: ids are non-negative integers
    encode = SampleTokenizer(tokenizer, 64)
    encode(samples[0])
    with pytest.raises(DatasetError) as info:
        encode(samples[1])
    assert (info.value.row, info.value.field) == (2, "input_ids") and "outside the tokenizer" in info.value.message


def test_check_files_reports_rows_per_file(tmp_path: Path):
    a = write_jsonl(tmp_path / "a.jsonl", [GOOD_CHAT] * 3)
    b = write_jsonl(tmp_path / "b.jsonl", [GOOD_CHAT] * 2)
    report = check_files([str(a), str(b)])
    assert report.format == "messages" and report.rows == 5
    assert [(f.file, f.rows) for f in report.files] == [(str(a), 3), (str(b), 2)]

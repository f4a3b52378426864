"""Each dataset format converts to the expected canonical samples, and its loss mask trains what the
format says (checked by decoding the trained tokens with the real SmolLM2 tokenizer)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cynode.engines.training.data import (
    IGNORE_INDEX, SampleTokenizer, Segment, TokenizedPair, check_files, iter_samples, pack,
)
from training_testkit import write_jsonl

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def trained_text(tokenizer, item) -> str:
    return tokenizer.decode([t for t, label in zip(item.input_ids, item.labels) if label != IGNORE_INDEX])


def full_text(tokenizer, item) -> str:
    return tokenizer.decode(item.input_ids)


def one(path: Path, fmt: str | None = None, method: str = "supervised"):
    samples = list(iter_samples([str(path)], fmt, method))
    assert len(samples) == 1
    return samples[0]


def test_text_trains_on_all_of_it_and_the_eos(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "Cats sleep a lot."}])
    sample = one(path)
    assert sample.segments == (Segment("Cats sleep a lot.", train=True),) and sample.eos
    item = SampleTokenizer(tokenizer, 64)(sample)
    assert trained_text(tokenizer, item) == "Cats sleep a lot.<|im_end|>"
    assert item.labels[0] != IGNORE_INDEX


def test_alpaca_is_rendered_as_chat_and_trains_only_the_output(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}])
    sample = one(path)
    assert sample.segments == (Segment("Add the numbers.\n2 and 3", role="user"),
                               Segment("5", train=True, role="assistant"))
    item = SampleTokenizer(tokenizer, 128)(sample)
    assert full_text(tokenizer, item) == (SYSTEM + "<|im_start|>user\nAdd the numbers.\n2 and 3<|im_end|>\n"
                                          "<|im_start|>assistant\n5<|im_end|>\n")
    assert trained_text(tokenizer, item) == "5<|im_end|>\n"


def test_sharegpt_trains_every_gpt_turn_and_nothing_else(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "s.jsonl", [{"system": "Be brief.", "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
        {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Goodbye."}]}])
    sample = one(path)
    assert [s.role for s in sample.segments] == ["system", "user", "assistant", "user", "assistant"]
    assert [s.train for s in sample.segments] == [False, False, True, False, True]
    item = SampleTokenizer(tokenizer, 128)(sample)
    assert full_text(tokenizer, item).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert trained_text(tokenizer, item) == "Hello.<|im_end|>\nGoodbye.<|im_end|>\n"


def test_messages_follow_the_chat_template_and_honour_weight_zero(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "wrong", "weight": 0},
        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": [{"type": "text", "text": "right"}]}]}])
    sample = one(path)
    assert [s.train for s in sample.segments] == [False, False, False, True]
    item = SampleTokenizer(tokenizer, 128)(sample)
    assert full_text(tokenizer, item) == (SYSTEM + "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nwrong"
                                          "<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nright"
                                          "<|im_end|>\n")
    assert trained_text(tokenizer, item) == "right<|im_end|>\n"


def test_prompt_completion_masks_the_prompt(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q: capital of France?\nA:", "completion": " Paris"}])
    sample = one(path)
    assert sample.segments == (Segment("Q: capital of France?\nA:"), Segment(" Paris", train=True))
    item = SampleTokenizer(tokenizer, 64)(sample)
    assert full_text(tokenizer, item) == "Q: capital of France?\nA: Paris<|im_end|>"
    assert trained_text(tokenizer, item) == " Paris<|im_end|>"


def test_prompt_completion_with_message_lists_is_chat(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": [{"role": "user", "content": "Hi"}],
                                                "completion": [{"role": "assistant", "content": "Hello"}]}])
    item = SampleTokenizer(tokenizer, 128)(one(path))
    assert trained_text(tokenizer, item) == "Hello<|im_end|>\n"


def test_segments_train_exactly_the_labelled_parts(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "g.jsonl", [{"segments": [
        {"text": "Input: abc. ", "label": False}, {"text": "Output: cba.", "label": True},
        {"text": " (end)", "label": False}]}])
    sample = one(path)
    assert [s.train for s in sample.segments] == [False, True, False] and not sample.eos
    item = SampleTokenizer(tokenizer, 64)(sample)
    assert full_text(tokenizer, item) == "Input: abc. Output: cba. (end)"
    # The space before "Output" merges into its token, which ends in the trained segment: trained.
    assert trained_text(tokenizer, item) == " Output: cba."


def test_tokenized_rows_keep_their_ids_and_labels(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "k.jsonl", [{"input_ids": [10, 11, 12, 13], "labels": [-100, -100, 12, 13]},
                                              {"input_ids": [5, 6]}])
    samples = list(iter_samples([str(path)]))
    assert samples[0].segments == (Segment(token_ids=(10, 11)), Segment(token_ids=(12, 13), train=True))
    encode = SampleTokenizer(tokenizer, 64)
    first, second = encode(samples[0]), encode(samples[1])
    assert (first.input_ids, first.labels) == ([10, 11, 12, 13], [IGNORE_INDEX, IGNORE_INDEX, 12, 13])
    assert (second.input_ids, second.labels) == ([5, 6], [5, 6])


def test_preference_pairs_share_the_prompt_and_train_each_completion(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
        {"prompt": [{"role": "user", "content": "Say hi"}], "chosen": [{"role": "assistant", "content": "Hi!"}],
         "rejected": [{"role": "assistant", "content": "No."}]},
        {"chosen": [{"role": "user", "content": "Yes?"}, {"role": "assistant", "content": "Yes."}],
         "rejected": [{"role": "user", "content": "Yes?"}, {"role": "assistant", "content": "Never."}]},
    ])
    plain, chat, implicit = list(iter_samples([str(path)], None, "dpo"))
    assert plain.prompt == (Segment("2+2="),) and plain.rejected == (Segment("5", train=True),)
    encode = SampleTokenizer(tokenizer, 128)
    pair = encode(plain)
    assert isinstance(pair, TokenizedPair)
    assert (trained_text(tokenizer, pair.chosen), trained_text(tokenizer, pair.rejected)) == ("4<|im_end|>", "5<|im_end|>")
    pair = encode(chat)
    assert trained_text(tokenizer, pair.chosen) == "Hi!<|im_end|>\n"
    assert full_text(tokenizer, pair.rejected).endswith("<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\nNo.<|im_end|>\n")
    assert implicit.prompt[-1] == Segment("Yes?", role="user")
    pair = encode(implicit)
    assert (trained_text(tokenizer, pair.chosen), trained_text(tokenizer, pair.rejected)) == (
        "Yes.<|im_end|>\n", "Never.<|im_end|>\n")


@pytest.mark.parametrize("rows, fmt", [
    ([{"text": "x"}], "text"),
    ([{"instruction": "i", "output": "o"}], "alpaca"),
    ([{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}], "sharegpt"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}], "messages"),
    ([{"prompt": "a", "completion": "b"}], "prompt_completion"),
    ([{"segments": [{"text": "a", "label": True}]}], "segments"),
    ([{"input_ids": [1, 2]}], "tokenized"),
])
def test_the_format_is_detected_from_the_first_row(tmp_path, rows, fmt):
    report = check_files([str(write_jsonl(tmp_path / "f.jsonl", rows))])
    assert (report.format, report.rows) == (fmt, 1)


def test_check_files_detects_preference_for_dpo(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3)
    assert check_files([str(path)], method="dpo").format == "preference"


def test_json_parquet_and_csv_files_load_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "Q1", "completion": "A1"}, {"prompt": "Q2", "completion": "A2"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with open(tmp_path / "d.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["prompt", "completion"])
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "noext").write_text("".join(json.dumps(r) + "\n" for r in rows))  # an upload stored under an id
    expected = [s.segments for s in iter_samples([str(write_jsonl(tmp_path / "d.jsonl", rows))])]
    for name in ("d.json", "d.parquet", "d.csv", "noext"):
        got = [s.segments for s in iter_samples([str(tmp_path / name)])]
        assert got == expected, name


def test_csv_cells_holding_json_lists_are_parsed(tmp_path):
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["messages"])
        writer.writerow([json.dumps([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])])
    sample = one(tmp_path / "m.csv")
    assert [s.role for s in sample.segments] == ["user", "assistant"]


def test_long_samples_are_truncated_and_packing_fills_sequences(tmp_path, tokenizer):
    encode = SampleTokenizer(tokenizer, 8)
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "one two three four five six seven eight nine ten"}])
    item = encode(one(path))
    assert item.truncated and len(item.input_ids) == 8
    short = SampleTokenizer(tokenizer, 64)
    items = [short(s) for s in iter_samples([str(write_jsonl(tmp_path / "s.jsonl",
                                                              [{"text": "a b"}, {"text": "c d e"}, {"text": "f"}]))])]
    packed = pack(items, 8)
    assert sum(len(p.input_ids) for p in packed) == sum(len(i.input_ids) for i in items)
    assert all(len(p.input_ids) <= 8 for p in packed) and len(packed) < len(items)
    for p in packed:  # positions restart at 0 at each packed sample
        assert p.position_ids[0] == 0 and p.position_ids.count(0) >= 1
        assert len(p.position_ids) == len(p.input_ids)

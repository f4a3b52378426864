"""The eight dataset formats: detect one from a row, and convert a row to the canonical `Sample`.

Conversion checks the row's structure only (no tokenizer), so a whole file can be validated before
any model is loaded. What is trained follows the format:

| format | row | trained on |
| --- | --- | --- |
| text | `{"text"}` | all of it, then EOS |
| alpaca | `{"instruction", "input"?, "output", "system"?, "history"?}` | the output (rendered as chat) |
| sharegpt | `{"conversations": [{"from", "value"}], "system"?}` | the gpt turns |
| messages | `{"messages": [{"role", "content", "weight"?}]}` (OpenAI chat) | assistant turns with weight 1 |
| prompt_completion | `{"prompt", "completion"}` (strings, or message lists) | the completion, then EOS |
| segments | `{"segments": [{"text", "label"}]}` | segments with label true |
| tokenized | `{"input_ids", "labels"?}` | tokens whose label is not -100 (all without labels) |
| preference | `{"prompt"?, "chosen", "rejected"}` (strings or message lists) | DPO: chosen against rejected |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cynode.errors import DatasetError

from .sample import IGNORE_INDEX, Sample, Segment

FORMATS = ("text", "alpaca", "sharegpt", "messages", "prompt_completion", "segments", "tokenized", "preference")
CHAT_ROLES = ("system", "user", "assistant", "tool")
_ROLE_ALIASES = {"developer": "system"}
_SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
    "system": "system", "observation": "tool", "tool": "tool", "function_call": "assistant",
}
EXPECTED = {
    "text": '{"text": "..."}',
    "alpaca": '{"instruction": "...", "input": "..." (optional), "output": "..."}',
    "sharegpt": '{"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}, ...]}',
    "messages": '{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}, ...]}',
    "prompt_completion": '{"prompt": "...", "completion": "..."}',
    "segments": '{"segments": [{"text": "...", "label": true|false}, ...]}',
    "tokenized": '{"input_ids": [int, ...], "labels": [int or -100, ...] (optional)}',
    "preference": '{"prompt": "..." (optional), "chosen": "...", "rejected": "..."}',
}


class _Row:
    """Where a record came from, to raise errors that name file, row, field and expected format."""

    def __init__(self, file: str, row: int, fmt: str) -> None:
        self.file, self.row, self.fmt = file, row, fmt

    def error(self, problem: str, field: str | None = None, expected: str | None = None) -> DatasetError:
        return DatasetError(self.file, problem, row=self.row, field=field,
                            expected=expected or EXPECTED[self.fmt], format=self.fmt)

    def string(self, record: dict, key: str, *, optional: bool = False, empty_ok: bool = False,
               field: str | None = None) -> str:
        value = record.get(key)
        field = field or key
        if value is None:
            if optional:
                return ""
            raise self.error("is missing", field)
        if not isinstance(value, str):
            raise self.error(f"is a {_kind(value)}, not a string", field, "a string")
        if not value.strip() and not (empty_ok or optional):
            raise self.error("is empty", field, "a non-empty string")
        return value

    def items(self, record: dict, key: str, field: str | None = None) -> list:
        value = record.get(key)
        field = field or key
        if value is None:
            raise self.error("is missing", field)
        if not isinstance(value, list):
            raise self.error(f"is a {_kind(value)}, not a list", field, "a list")
        if not value:
            raise self.error("is an empty list", field, "a non-empty list")
        return value


def detect_format(record: dict[str, Any], file: str, row: int) -> str:
    """The format a row is in, from the fields it has; DatasetError when none matches."""
    keys = set(record)
    if "input_ids" in keys:
        return "tokenized"
    if {"chosen", "rejected"} <= keys:
        return "preference"
    for key, fmt in (("messages", "messages"), ("conversations", "sharegpt"), ("segments", "segments")):
        if key in keys:
            return fmt
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    raise DatasetError(
        file, f"has fields {', '.join(sorted(map(str, keys))) or '(none)'}, which match no format", row=row,
        expected="the fields of one of: " + "; ".join(f"{k} {v}" for k, v in EXPECTED.items()),
    )


def to_sample(fmt: str, record: dict[str, Any], file: str, row: int) -> Sample:
    """Convert one row; raises DatasetError naming file, row, field and the format's shape."""
    if fmt not in _CONVERTERS:
        raise DatasetError(file, f"unknown format {fmt!r}", expected="one of " + ", ".join(FORMATS))
    return _CONVERTERS[fmt](record, _Row(file, row, fmt))


def _text(record: dict, at: _Row) -> Sample:
    return Sample((Segment(at.string(record, "text"), train=True),), file=at.file, row=at.row, eos=True)


def _alpaca(record: dict, at: _Row) -> Sample:
    instruction = at.string(record, "instruction")
    extra = at.string(record, "input", optional=True)
    output = at.string(record, "output")
    segments = _system(record, at)
    history = record.get("history") or []
    if not isinstance(history, list):
        raise at.error(f"is a {_kind(history)}, not a list", "history", "a list of [instruction, output] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise at.error("is not a pair of strings", f"history[{i}]", "[instruction, output]")
        segments += (Segment(pair[0], role="user"), Segment(pair[1], train=True, role="assistant"))
    user = f"{instruction}\n{extra}" if extra.strip() else instruction
    segments += (Segment(user, role="user"), Segment(output, train=True, role="assistant"))
    return Sample(segments, file=at.file, row=at.row)


def _sharegpt(record: dict, at: _Row) -> Sample:
    turns = at.items(record, "conversations")
    segments = _system(record, at)
    for i, turn in enumerate(turns):
        field = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise at.error(f"is a {_kind(turn)}, not an object", field)
        who_key, text_key = ("from", "value") if "from" in turn or "value" in turn else ("role", "content")
        who = turn.get(who_key)
        if who not in _SHAREGPT_ROLES:
            raise at.error(f"is {who!r}" if who is not None else "is missing", f"{field}.{who_key}",
                           "one of " + ", ".join(sorted(_SHAREGPT_ROLES)))
        text = at.string(turn, text_key, field=f"{field}.{text_key}", empty_ok=True)
        role = _SHAREGPT_ROLES[who]
        segments += (Segment(text, train=role == "assistant", role=role),)
    return _chat_sample(segments, at, "conversations")


def _messages(record: dict, at: _Row) -> Sample:
    return _chat_sample(_system(record, at) + _message_list(record, "messages", at), at, "messages")


def _prompt_completion(record: dict, at: _Row) -> Sample:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):
        segments = _message_list(record, "prompt", at, train_assistant=False)
        segments += _completion_messages(record, "completion", at)
        return _chat_sample(segments, at, "completion")
    text = at.string(record, "prompt", empty_ok=True)
    return Sample((Segment(text), Segment(at.string(record, "completion"), train=True)), file=at.file, row=at.row, eos=True)


def _segments(record: dict, at: _Row) -> Sample:
    parts = at.items(record, "segments")
    segments = []
    for i, part in enumerate(parts):
        field = f"segments[{i}]"
        if not isinstance(part, dict):
            raise at.error(f"is a {_kind(part)}, not an object", field)
        text = at.string(part, "text", field=f"{field}.text", empty_ok=True)
        label = part.get("label")
        if not isinstance(label, bool):
            raise at.error("is missing" if label is None else f"is {label!r}", f"{field}.label", "true or false")
        segments.append(Segment(text, train=label))
    if not any(s.train for s in segments):
        raise at.error("has no segment with label true: nothing to train on", "segments")
    return Sample(tuple(segments), file=at.file, row=at.row)


def _tokenized(record: dict, at: _Row) -> Sample:
    ids = at.items(record, "input_ids")
    for i, tok in enumerate(ids):
        if not isinstance(tok, int) or isinstance(tok, bool) or tok < 0:
            raise at.error(f"is {tok!r}", f"input_ids[{i}]", "a non-negative integer token id")
    labels = record.get("labels")
    if labels is None:
        return Sample((Segment(token_ids=tuple(ids), train=True),), file=at.file, row=at.row)
    if not isinstance(labels, list) or len(labels) != len(ids):
        got = f"{len(labels)} labels" if isinstance(labels, list) else f"a {_kind(labels)}"
        raise at.error(f"is {got} for {len(ids)} input_ids", "labels", "one label per input id")
    runs: list[Segment] = []
    for i, (tok, label) in enumerate(zip(ids, labels)):
        if label != IGNORE_INDEX and label != tok:
            raise at.error(f"is {label!r} where input_ids[{i}] is {tok}", f"labels[{i}]",
                           "the input id itself or -100 (labels are not shifted)")
        train = label != IGNORE_INDEX
        if runs and runs[-1].train == train:
            runs[-1] = Segment(token_ids=runs[-1].token_ids + (tok,), train=train)  # type: ignore[operator]
        else:
            runs.append(Segment(token_ids=(tok,), train=train))
    if not any(s.train for s in runs):
        raise at.error("are all -100: nothing to train on", "labels", "at least one label that is not -100")
    return Sample(tuple(runs), file=at.file, row=at.row)


def _preference(record: dict, at: _Row) -> Sample:
    chosen, rejected = record.get("chosen"), record.get("rejected")
    prompt = record.get("prompt")
    conversational = any(isinstance(v, list) for v in (prompt, chosen, rejected))
    if not conversational:
        text = at.string(record, "prompt", optional=True)
        good, bad = at.string(record, "chosen"), at.string(record, "rejected")
        return Sample((Segment(text), Segment(good, train=True)), rejected=(Segment(bad, train=True),),
                      file=at.file, row=at.row, eos=True)
    if prompt is None:
        # Implicit prompt (Anthropic HH style): both are whole conversations; their common start is the prompt.
        good_all = _message_list(record, "chosen", at, train_assistant=False)
        bad_all = _message_list(record, "rejected", at, train_assistant=False)
        n = 0
        while n < min(len(good_all), len(bad_all)) - 1 and good_all[n] == bad_all[n]:
            n += 1
        head = _system(record, at) + good_all[:n]
        good, bad = _as_completion(good_all[n:], at, "chosen"), _as_completion(bad_all[n:], at, "rejected")
    else:
        head = _system(record, at) + (_message_list(record, "prompt", at, train_assistant=False)
                                      if isinstance(prompt, list) else (Segment(at.string(record, "prompt"), role="user"),))
        good = _completion_messages(record, "chosen", at)
        bad = _completion_messages(record, "rejected", at)
    if not head or head[-1].role == "assistant":
        raise at.error("does not end with a user turn before the completions", "prompt",
                       "a prompt whose last message is from the user")
    return Sample(head + good, rejected=bad, file=at.file, row=at.row)


def _system(record: dict, at: _Row) -> tuple[Segment, ...]:
    text = at.string(record, "system", optional=True)
    return (Segment(text, role="system"),) if text else ()


def _message_list(record: dict, key: str, at: _Row, *, train_assistant: bool = True) -> tuple[Segment, ...]:
    out = []
    for i, msg in enumerate(at.items(record, key)):
        field = f"{key}[{i}]"
        if not isinstance(msg, dict):
            raise at.error(f"is a {_kind(msg)}, not an object", field, '{"role": "...", "content": "..."}')
        role = _ROLE_ALIASES.get(msg.get("role"), msg.get("role"))
        if role not in CHAT_ROLES:
            raise at.error(f"is {msg.get('role')!r}" if "role" in msg else "is missing", f"{field}.role",
                           "one of " + ", ".join(CHAT_ROLES))
        if msg.get("tool_calls"):
            raise at.error("holds tool calls, which training does not support yet", f"{field}.tool_calls",
                           "messages with text content")
        content = _content(msg.get("content"), at, f"{field}.content")
        weight = msg.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise at.error(f"is {weight!r}", f"{field}.weight", "0 or 1")
        if "weight" in msg and role != "assistant":
            raise at.error("is set on a non-assistant message", f"{field}.weight", "weight only on assistant messages")
        out.append(Segment(content, train=train_assistant and role == "assistant" and weight == 1, role=role))
    return tuple(out)


def _completion_messages(record: dict, key: str, at: _Row) -> tuple[Segment, ...]:
    value = record.get(key)
    if isinstance(value, str) or value is None:
        return (Segment(at.string(record, key), train=True, role="assistant"),)
    return _as_completion(_message_list(record, key, at, train_assistant=False), at, key)


def _as_completion(messages: tuple[Segment, ...], at: _Row, key: str) -> tuple[Segment, ...]:
    if not messages or any(m.role != "assistant" for m in messages):
        raise at.error("must be assistant messages only", key, "one or more assistant messages")
    return tuple(Segment(m.text, train=True, role="assistant") for m in messages)


def _content(value: Any, at: _Row, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts: only text parts can be trained on
        texts = []
        for j, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise at.error("is not a text part", f"{field}[{j}]", '{"type": "text", "text": "..."}')
            texts.append(part["text"])
        return "".join(texts)
    raise at.error("is missing" if value is None else f"is a {_kind(value)}", field, "a string or a list of text parts")


def _chat_sample(segments: tuple[Segment, ...], at: _Row, field: str) -> Sample:
    if not any(s.train for s in segments):
        raise at.error("has no assistant message to train on", field, "at least one assistant message")
    return Sample(segments, file=at.file, row=at.row)


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


_CONVERTERS: dict[str, Callable[[dict, _Row], Sample]] = {
    "text": _text, "alpaca": _alpaca, "sharegpt": _sharegpt, "messages": _messages,
    "prompt_completion": _prompt_completion, "segments": _segments, "tokenized": _tokenized,
    "preference": _preference,
}

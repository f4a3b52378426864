"""From data files to what the trainer consumes, in two stages a job can fail at separately.

`check_files` reads every row and converts it to a canonical sample without a tokenizer: cheap, no
model, so a job with a bad file fails in `validating_files` before a worker loads anything.
`prepare_dataset` then tokenizes with the model's tokenizer, masks, truncates, splits off the
validation set and packs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cynode.errors import DatasetError

from .formats import detect_format, to_sample
from .loader import read_rows
from .packing import pack
from .sample import Sample, TokenizedPair, TokenizedSample
from .tokenize import SampleTokenizer


@dataclass(frozen=True)
class FileCheck:
    file: str
    format: str
    rows: int


@dataclass(frozen=True)
class DatasetCheck:
    format: str
    rows: int
    files: list[FileCheck]


def iter_samples(paths: Iterable[str], fmt: str | None = None, method: str = "supervised") -> Iterator[Sample]:
    """Every row of every file as a Sample; the format is detected from the first row when not given.

    Raises DatasetError at the first bad row, naming file, row, field and the expected format.
    """
    for path in paths:
        for row, record in read_rows(path):
            if fmt is None:
                fmt = detect_format(record, str(path), row)
                _check_method(fmt, method, str(path), row)
            yield to_sample(fmt, record, str(path), row)


def check_files(paths: list[str], fmt: str | None = None, method: str = "supervised") -> DatasetCheck:
    """Validate whole files structurally (no tokenizer, no model): what `validating_files` runs."""
    if fmt is not None:
        _check_method(fmt, method, str(paths[0]) if paths else "", None)
    files: list[FileCheck] = []
    detected = fmt
    for path in paths:
        rows = 0
        for row, record in read_rows(path):
            if detected is None:
                detected = detect_format(record, str(path), row)
                _check_method(detected, method, str(path), row)
            to_sample(detected, record, str(path), row)
            rows += 1
        files.append(FileCheck(str(path), detected or "", rows))
    return DatasetCheck(detected or "", sum(f.rows for f in files), files)


@dataclass
class PreparedData:
    format: str
    train: list[Any]
    """TokenizedSample (supervised) or TokenizedPair (dpo) items, packed when asked."""
    eval: list[Any]
    stats: dict[str, int] = field(default_factory=dict)


def prepare_dataset(spec: Any, tokenizer: Any) -> PreparedData:
    """Tokenize and split the job's files (spec: a JobSpec); raises DatasetError for unusable data."""
    hp = spec.hyperparameters
    encode = SampleTokenizer(tokenizer, hp.max_seq_len)
    fmt = spec.format
    train_samples = list(iter_samples(spec.train_files, fmt, spec.method))
    fmt = fmt or _format_of(spec)
    eval_samples = list(iter_samples(spec.validation_files, fmt, spec.method)) if spec.validation_files else []
    train, t_stats = _encode_all(train_samples, encode)
    evals, _ = _encode_all(eval_samples, encode)
    if not train:
        raise DatasetError(str(spec.train_files[0]), f"no sample has a token left to train on within "
                           f"max_seq_len {hp.max_seq_len}", expected="shorter prompts or a larger max_seq_len")
    if not evals and spec.validation_split > 0 and len(train) > 1:
        order = list(range(len(train)))
        random.Random(spec.seed).shuffle(order)
        n_eval = min(len(train) - 1, max(1, math.ceil(len(train) * spec.validation_split)))
        held = set(order[:n_eval])
        evals = [s for i, s in enumerate(train) if i in held]
        train = [s for i, s in enumerate(train) if i not in held]
    stats = {
        "train_samples": len(train),
        "eval_samples": len(evals),
        "train_tokens": sum(_tokens(s) for s in train),
        "loss_tokens": sum(_loss_tokens(s) for s in train),
        "truncated_samples": t_stats["truncated"],
        "dropped_samples": t_stats["dropped"],
    }
    if hp.packing and spec.method == "supervised":
        train = pack(train, hp.max_seq_len)
        evals = pack(evals, hp.max_seq_len) if evals else evals
    stats["sequences"] = len(train)
    return PreparedData(fmt, train, evals, stats)


def _encode_all(samples: list[Sample], encode: SampleTokenizer) -> tuple[list[Any], dict[str, int]]:
    out, truncated, dropped = [], 0, 0
    for sample in samples:
        item = encode(sample)
        truncated += item.truncated
        if _loss_tokens(item) == 0 or (isinstance(item, TokenizedPair) and min(
                item.chosen.loss_tokens, item.rejected.loss_tokens) == 0):
            dropped += 1
            continue
        out.append(item)
    return out, {"truncated": truncated, "dropped": dropped}


def _tokens(item: TokenizedSample | TokenizedPair) -> int:
    if isinstance(item, TokenizedPair):
        return len(item.chosen.input_ids) + len(item.rejected.input_ids)
    return len(item.input_ids)


def _loss_tokens(item: TokenizedSample | TokenizedPair) -> int:
    if isinstance(item, TokenizedPair):
        return item.chosen.loss_tokens + item.rejected.loss_tokens
    return item.loss_tokens


def _format_of(spec: Any) -> str:
    for row, record in read_rows(spec.train_files[0]):
        return detect_format(record, str(spec.train_files[0]), row)
    raise AssertionError("read_rows yields at least one row or raises")


def _check_method(fmt: str, method: str, file: str, row: int | None) -> None:
    if method == "dpo" and fmt != "preference":
        raise DatasetError(file, f"is in the {fmt} format, but DPO trains on pairs", row=row,
                           expected='{"prompt", "chosen", "rejected"} rows', format="preference")
    if method == "supervised" and fmt == "preference":
        raise DatasetError(file, "is in the preference format, which trains with method dpo, not supervised",
                           row=row, format="preference")

"""Read a data file as (row number, record) pairs: JSONL, JSON, Parquet or CSV.

Rows are numbered from 1 as a user counts them: the line for JSONL (blank lines count but yield
nothing), the element for a JSON array, the data row (header excluded) for CSV and Parquet. Files are
read lazily, so checking a large file holds one row at a time. The kind comes from the extension, or
is sniffed from the first bytes when there is none (uploaded files are stored under an id).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cynode.errors import DatasetError

KINDS = ("jsonl", "json", "parquet", "csv")
_EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv", ".tsv": "csv",
}
_PARQUET_MAGIC = b"PAR1"
_PARQUET_BATCH = 1024


def file_kind(path: str | Path) -> str:
    """jsonl, json, parquet or csv, from the extension or, failing that, the first bytes."""
    path = Path(path)
    kind = _EXTENSIONS.get(path.suffix.lower())
    if kind is not None:
        return kind
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise DatasetError(str(path), f"cannot be read: {exc.strerror or exc}") from None
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"["):
        return "json"
    if text.startswith(b"{"):
        return "jsonl"
    return "csv"


def read_rows(path: str | Path, kind: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row, record) for every row; raises DatasetError naming the file and row."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise DatasetError(name, "no such file" if not path.exists() else "is not a file")
    kind = kind or file_kind(path)
    if kind not in KINDS:
        raise DatasetError(name, f"unknown file kind {kind!r} (expected one of {', '.join(KINDS)})")
    reader = {"jsonl": _jsonl, "json": _json, "parquet": _parquet, "csv": _csv}[kind]
    empty = True
    for row, record in reader(path, name):
        if not isinstance(record, dict):
            raise DatasetError(name, f"is a {type(record).__name__}, not an object", row=row,
                               expected="one JSON object per row")
        empty = False
        yield row, record
    if empty:
        raise DatasetError(name, "has no rows")


def _jsonl(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8-sig", errors="strict") as fh:
        try:
            for row, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield row, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(name, f"is not valid JSON: {exc.msg} at column {exc.colno}",
                                       row=row, expected="one JSON object per line") from None
        except UnicodeDecodeError as exc:
            raise DatasetError(name, f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _json(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(name, f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line in a .json file: read it as JSONL
            yield from _jsonl(path, name)
            return
        raise DatasetError(name, f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                           expected="a JSON array of objects") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} as some exporters write it
    if not isinstance(data, list):
        raise DatasetError(name, f"holds a JSON {type(data).__name__}", expected="a JSON array of objects")
    yield from enumerate(data, start=1)


def _parquet(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(name, "is Parquet, which needs the pyarrow package (pip install pyarrow)") from None
    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid and OSError kinds
        raise DatasetError(name, f"is not a readable Parquet file: {exc}") from None
    row = 0
    for batch in handle.iter_batches(batch_size=_PARQUET_BATCH):
        for record in batch.to_pylist():
            row += 1
            yield row, record


def _csv(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8-sig", newline="") as fh:
        try:
            reader = csv.DictReader(fh, delimiter=delimiter)
            if not reader.fieldnames:
                return
            for row, record in enumerate(reader, start=1):
                if None in record:
                    raise DatasetError(name, f"has {len(reader.fieldnames) + len(record[None])} cells "
                                       f"for {len(reader.fieldnames)} columns", row=row,
                                       expected="as many cells as header columns")
                yield row, {key: _cell(value) for key, value in record.items()}
        except csv.Error as exc:
            raise DatasetError(name, f"is not valid CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise DatasetError(name, f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _cell(value: str | None) -> Any:
    """CSV has only strings: a cell holding a JSON list or object (messages, segments) is parsed."""
    if value is None:
        return None
    stripped = value.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value
    return value

"""Training data: loaders for JSONL, JSON, Parquet and CSV; eight formats; one canonical sample."""

from .formats import EXPECTED, FORMATS, detect_format, to_sample
from .loader import file_kind, read_rows
from .packing import pack
from .prepare import DatasetCheck, FileCheck, PreparedData, check_files, iter_samples, prepare_dataset
from .sample import IGNORE_INDEX, Sample, Segment, TokenizedPair, TokenizedSample
from .tokenize import SampleTokenizer

__all__ = [
    "EXPECTED",
    "FORMATS",
    "IGNORE_INDEX",
    "DatasetCheck",
    "FileCheck",
    "PreparedData",
    "Sample",
    "SampleTokenizer",
    "Segment",
    "TokenizedPair",
    "TokenizedSample",
    "check_files",
    "detect_format",
    "file_kind",
    "iter_samples",
    "pack",
    "prepare_dataset",
    "read_rows",
    "to_sample",
]

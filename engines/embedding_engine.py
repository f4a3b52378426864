"""Sentence embeddings with HF transformers: a sentence-transformers folder, pooled and normalised as it says.

Serves any sentence-transformers model folder (the built-in all-MiniLM-L6-v2 among them): the
encoder is loaded with `AutoModel`, and the folder's `modules.json` and `1_Pooling/config.json`
decide the pooling (mean, CLS or max over the tokens) and whether vectors are L2-normalised, so the
vectors equal what `SentenceTransformer.encode` gives, without depending on that library.

All model work runs on one thread of the engine's own, in batches of `batch_size` texts; the event
loop only awaits it. An input longer than the model's `max_seq_length` is refused (400), as an
OpenAI server does, rather than silently truncated.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from cynode.engines.base import EngineHealth, GenerationRequest, InferenceEngine, ModelCard, TokenDelta
from cynode.engines.embedding import Embeddings
from cynode.engines.platform import HF_LOAD_LOCK
from cynode.errors import EngineError, RequestError

__all__ = ["EmbeddingEngine"]


class EmbeddingEngine(InferenceEngine):
    """Embeds texts with one sentence-transformers folder on CPU, CUDA or NPU."""

    def __init__(self, model_dir: Path, model_id: str, *, aliases: tuple[str, ...] = (),
                 backend: str = "cpu-embedding", device: str = "cpu", batch_size: int = 32) -> None:
        self.model_dir = Path(model_dir)
        self.model_id = model_id
        self.aliases = tuple(aliases)
        self.backend = backend
        self.device_name = device
        self.batch_size = batch_size
        self.dimensions = 0
        self.max_seq_length = 0
        self._pooling = "mean"
        self._normalize = False
        self._model = None
        self._tokenizer = None
        self._active = 0
        self._closed = False
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"embed-{model_id}")
        self._lock = threading.Lock()  # the tokenizer and model belong to the engine's one thread

    async def start(self) -> None:
        if self._closed:
            raise EngineError(f"engine for {self.model_id} is closed")
        if self._model is None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        folder = self.model_dir
        if not (folder / "config.json").is_file():
            raise EngineError(f"model {self.model_id}: {folder} has no config.json (not a model folder)")
        hf_logging.disable_progress_bar()
        try:
            if self.device_name.startswith("npu"):
                import torch_npu  # noqa: F401  (registers the "npu" device with torch)
            with HF_LOAD_LOCK:
                tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
                model = AutoModel.from_pretrained(folder, local_files_only=True)
                model.to(torch.device(self.device_name)).eval()
        except Exception as exc:
            raise EngineError(f"model {self.model_id}: loading {folder} on {self.device_name} failed: {exc}") from exc
        self._pooling, self._normalize = _pooling_of(folder)
        self.max_seq_length = _max_seq_length(folder, model)
        self.dimensions = int(model.config.hidden_size)
        self._tokenizer, self._model = tokenizer, model

    async def close(self) -> None:
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        self._model = self._tokenizer = None

    def health(self) -> EngineHealth:
        if self._closed:
            return EngineHealth(ready=False, detail="closed", active_requests=self._active)
        if self._model is None:
            return EngineHealth(ready=False, detail="loading")
        return EngineHealth(ready=True, active_requests=self._active)

    def models(self) -> list[ModelCard]:
        return [ModelCard(id=self.model_id, backend=self.backend, context_length=self.max_seq_length,
                          aliases=self.aliases, loaded=self._model is not None)]

    async def abort(self, request_id: str) -> None:
        pass  # an embedding is one short batch; nothing streams to abort

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        raise RequestError(f"model {self.model_id!r} is an embedding model: it does not generate text; "
                           "use POST /v1/embeddings", status=400, param="model", code="model_not_supported")
        yield  # pragma: no cover  (makes this an async generator, as the interface says)

    async def embed(self, texts: list[str], *, dimensions: int | None = None) -> Embeddings:
        if self._model is None or self._closed:
            raise EngineError(f"engine for {self.model_id} is {'closed' if self._closed else 'not started'}",
                              retryable=True)
        if dimensions is not None and dimensions != self.dimensions:
            raise RequestError(f"{self.model_id} gives {self.dimensions}-dimensional embeddings and cannot shorten "
                               f"them (it is not a Matryoshka model); got dimensions={dimensions}", status=400,
                               param="dimensions", code="invalid_value")
        self._active += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._embed, texts)
        finally:
            self._active -= 1

    def _embed(self, texts: list[str]) -> Embeddings:
        vectors: list[list[float]] = []
        tokens = 0
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start:start + self.batch_size]
                encoded = self._tokenizer(batch, padding=True, truncation=False, return_tensors="pt")
                lengths = encoded["attention_mask"].sum(dim=1).tolist()
                for i, length in enumerate(lengths):
                    if length > self.max_seq_length:
                        raise RequestError(
                            f"input[{start + i}] is {length} tokens but {self.model_id} reads at most "
                            f"{self.max_seq_length}; split the text", status=400, param=f"input[{start + i}]"
                            if len(texts) > 1 else "input", code="context_length_exceeded")
                tokens += int(sum(lengths))
                encoded = {k: v.to(self._model.device) for k, v in encoded.items()}
                hidden = self._model(**encoded).last_hidden_state
                pooled = _pool(hidden, encoded["attention_mask"], self._pooling)
                if self._normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                vectors.extend(pooled.float().cpu().tolist())
        return Embeddings(vectors=vectors, prompt_tokens=tokens)


def _pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _pooling_of(folder: Path) -> tuple[str, bool]:
    """(pooling mode, normalise?) from a sentence-transformers folder; mean pooling when it says nothing."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        modules = []
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    pooling = next((m.get("path") for m in modules if str(m.get("type", "")).endswith("Pooling")), "1_Pooling")
    try:
        config = json.loads((folder / pooling / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    mode = "cls" if config.get("pooling_mode_cls_token") else "max" if config.get("pooling_mode_max_tokens") else "mean"
    return mode, normalize


def _max_seq_length(folder: Path, model) -> int:
    try:
        return int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return int(getattr(model.config, "max_position_embeddings", 512))

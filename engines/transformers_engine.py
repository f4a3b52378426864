"""HF transformers inference engine: one model, continuously batched on one thread of its own.

This file is the facade: it loads the model, checks and encodes requests, and turns each request's
token ids into the `TokenDelta` stream of the engine interface. The work is done by:
- `batcher.ContinuousBatcher`: the one thread that owns the model; requests join and leave a running
  batch between decode steps, up to `capacity()` at once, later ones wait first in, first out;
- `kv_memory`: that capacity, from the KV cache's bytes per token, the context length and the memory
  budget (`memory_budget`, default KV_SHARE of what the device has free once the weights are in),
  under the optional ceiling `max_concurrency`;
- `batch_cache.RaggedKVCache`: the K/V of the running batch, one row per sequence;
- `sampling.TokenSampler`: penalties and sampling per request, with the request's own generator;
- `detokenizer.DeltaAssembler`: text deltas, stop strings, finish reason and usage, on the event loop;
- `chat_prompt`: the chat template's arguments, tools included;
- `guided.GrammarCache`: a guided request's grammar matcher (structured output, forced tool calls).

LoRA adapters (`load_adapter`, the `ServesAdapters` capability): the one base model becomes a PEFT
model holding every adapter under its model id, loaded while requests run (between two batcher
rounds); a request naming an adapter runs with it, one naming the base model without any, and
both kinds share the running batch (`adapter_names` per row). Each adapter adds only its own A/B
matrices to memory, never a copy of the base weights.

Tokens cross from the scheduler thread to the stream with `loop.call_soon_threadsafe`; nothing here
blocks the event loop. The same code serves `cpu`, `cuda` and `npu` (Ascend, through torch_npu).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import torch
from jinja2.exceptions import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from cynode.engines.attention import use_grouped_attention
from cynode.engines.base import EngineHealth, GenerationRequest, InferenceEngine, ModelCard, TokenDelta
from cynode.engines.batcher import ContinuousBatcher, Sequence
from cynode.engines.chat_prompt import chat_template_args, template_knows_tools
from cynode.engines.detokenizer import DeltaAssembler
from cynode.engines.base import check_sampling
from cynode.engines.logprobs import LogprobTracker, sampler_for
from cynode.engines.kv_memory import batch_capacity, kv_bytes_per_token
from cynode.engines.platform import HF_LOAD_LOCK, device_platform
from cynode.errors import EngineError, RequestError


class _Stream:
    """One request as its stream (on the loop) and the scheduler thread share it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self.seq: Sequence | None = None

    def push(self, kind: str, payload: object) -> None:
        """Scheduler side: hand an event to the stream; a closed loop means nobody listens any more."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))
        except RuntimeError:
            if self.seq is not None:
                self.seq.cancelled = True


KV_SHARE = 0.8  # of the device's free memory after the weights, for the KV cache, when no budget is given


class TransformersEngine(InferenceEngine):
    """Serves one model folder (safetensors + tokenizer) with HF transformers on CPU, CUDA or NPU."""

    def __init__(self, model_dir: Path, model_id: str, *, aliases: tuple[str, ...] = (),
                 backend: str = "cpu-transformers", device: str = "cpu", dtype: str = "float32",
                 max_concurrency: int | None = None, memory_budget: int | None = None) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1 (or None: as many as the memory allows)")
        if memory_budget is not None and memory_budget < 1:
            raise ValueError("memory_budget must be >= 1 byte (or None: KV_SHARE of the free memory)")
        self.model_dir = Path(model_dir)
        self.model_id = model_id
        self.aliases = tuple(aliases)
        self.backend = backend
        self.device_name = device
        self.dtype = dtype
        self.max_concurrency = max_concurrency  # a ceiling on capacity(); None: none
        self.memory_budget = memory_budget  # bytes for the KV cache; None: KV_SHARE of free memory
        self.kv_bytes_per_token = 0
        self.kv_token_budget = 0  # the batcher's cap on cached tokens
        self._capacity: int | None = None
        self._platform = device_platform(device)
        self._names = {model_id, *self.aliases}
        self._model = None
        self._tokenizer = None
        self._context_length = 0
        self._eos_ids: frozenset[int] = frozenset()
        self._grammars = None  # guided.GrammarCache, made on the first guided request
        self._native_tools = False
        # Fast tokenizers are Rust objects that raise "Already borrowed" under concurrent mutation.
        self._encode_lock = threading.Lock()
        self._batcher: ContinuousBatcher | None = None
        self._streams: dict[str, list[_Stream]] = {}
        self._adapters: dict[str, Path] = {}  # adapter model id -> its folder, once loaded
        self._closed = False

    # lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._model is not None:
            return
        if self._closed:
            raise EngineError(f"engine for {self.model_id} is closed")
        await asyncio.to_thread(self._load)
        self._size_batch()
        self._batcher = ContinuousBatcher(self._model, eos_ids=self._eos_ids, max_batch=self._capacity,
                                          device=self._model.device, name=self.model_id,
                                          kv_tokens=self.kv_token_budget)
        self._batcher.start()

    def _size_batch(self) -> None:
        """Capacity and the KV cap from the model's cache geometry and the memory budget (kv_memory.py)."""
        itemsize = next(self._model.parameters()).dtype.itemsize
        self.kv_bytes_per_token = kv_bytes_per_token(self._model.config, itemsize)
        self._apply_budget(self.memory_budget or int(self._platform.free_memory() * KV_SHARE))

    def _apply_budget(self, budget: int) -> None:
        context = self._context_length or 2048
        self._capacity = batch_capacity(budget, self.kv_bytes_per_token, context, ceiling=self.max_concurrency)
        # Never below one full-context sequence: a request the context admits must be able to finish.
        self.kv_token_budget = max(context, budget // self.kv_bytes_per_token)

    @property
    def kv_bytes(self) -> int:
        """Bytes the KV cache may grow to (the cap times the bytes per token); 0 before start."""
        return self.kv_token_budget * self.kv_bytes_per_token

    def set_kv_budget(self, budget_bytes: int) -> bool:
        """A new share of the worker's memory for the KV cache (see InferenceEngine.set_kv_budget)."""
        if budget_bytes < 1:
            raise ValueError("budget_bytes must be >= 1")
        self.memory_budget = int(budget_bytes)
        if self._model is not None and self._batcher is not None:
            self._apply_budget(self.memory_budget)
            self._batcher.resize(self._capacity, self.kv_token_budget)
        return True

    def _load(self) -> None:
        if not (self.model_dir / "config.json").is_file():
            raise EngineError(f"model {self.model_id}: {self.model_dir} has no config.json (not a model folder)")
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise EngineError(f"model {self.model_id}: unknown dtype {self.dtype!r} (try float32 or bfloat16)")
        hf_logging.disable_progress_bar()  # progress bars would flood the daemon's log
        try:
            device = self._platform.torch_device(self.device_name)
            with HF_LOAD_LOCK:
                tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype, local_files_only=True)
                model.to(device).eval()
                use_grouped_attention(model)
        except Exception as exc:
            raise EngineError(f"model {self.model_id}: loading {self.model_dir} on {self.device_name} failed: {exc}") from exc
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self._eos_ids = frozenset(eos_ids - {None})
        self._context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self._native_tools = template_knows_tools(tokenizer)
        self._tokenizer, self._model = tokenizer, model

    async def close(self) -> None:
        self._closed = True
        for streams in list(self._streams.values()):
            for stream in streams:
                self._abort_stream(stream)
        if self._batcher is not None:  # the thread finishes the step it is in, then returns
            batcher, self._batcher = self._batcher, None
            await asyncio.to_thread(batcher.close)
        self._model = self._tokenizer = None

    # status ------------------------------------------------------------------------------------

    def capacity(self) -> int | None:
        """Sequences batched at once (None before start): see kv_memory.py."""
        return self._capacity

    @property
    def active_requests(self) -> int:
        """Requests holding a place in the running batch."""
        return self._batcher.active if self._batcher else 0

    @property
    def waiting_requests(self) -> int:
        """Requests waiting for a place in the batch (first in, first out)."""
        return self._batcher.waiting if self._batcher else 0

    def health(self) -> EngineHealth:
        if self._closed:
            return EngineHealth(ready=False, detail="closed", active_requests=self.active_requests)
        if self._model is None:
            return EngineHealth(ready=False, detail="loading", active_requests=0)
        return EngineHealth(ready=True, active_requests=self.active_requests)

    def models(self) -> list[ModelCard]:
        context = self._context_length
        if not context:  # not loaded yet: the config says it as well
            try:
                context = int(json.loads((self.model_dir / "config.json").read_text()).get("max_position_embeddings", 0))
            except (OSError, ValueError):
                context = 0
        return [ModelCard(id=self.model_id, backend=self.backend, context_length=context,
                          aliases=self.aliases, loaded=self._model is not None),
                *(ModelCard(id=name, backend=self.backend, context_length=context) for name in self._adapters)]

    # LoRA adapters -----------------------------------------------------------------------------

    async def load_adapter(self, name: str, path: Path) -> None:
        """Serve the PEFT LoRA adapter in `path` as model id `name` next to the base model (no
        restart, no copy of the base weights); loading a name again replaces its weights."""
        if name in self._names:
            raise RequestError(f"adapter name {name!r} is the base model's name; pick another", param="name")
        self._check_running()
        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise RequestError(f"{path} is not a PEFT LoRA adapter folder (no adapter_config.json)", param="path")
        future = self._batcher.run_in_thread(lambda: self._add_adapter(name, path))
        try:
            await asyncio.wrap_future(future)
        except Exception as exc:
            self._adapters.pop(name, None)
            raise EngineError(f"adapter {name!r}: loading {path} onto {self.model_id} failed: {exc}") from exc
        self._adapters[name] = path

    async def unload_adapter(self, name: str) -> None:
        """Stop serving adapter `name` and free its weights; requests still using it should have ended."""
        if self._adapters.pop(name, None) is None:
            raise RequestError(f"adapter {name!r} is not loaded here", status=404, code="model_not_found",
                               param="model")
        if self._batcher is not None:
            await asyncio.wrap_future(self._batcher.run_in_thread(lambda: self._drop_adapter(name)))

    def _add_adapter(self, name: str, path: Path) -> None:
        """On the batcher thread, between rounds."""
        from peft import PeftModel

        model = self._batcher.model
        if isinstance(model, PeftModel):
            if name in model.peft_config:
                self._drop_adapter(name)
                model = self._batcher.model
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        else:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)
        self._model = self._batcher.model = model.eval()

    def _drop_adapter(self, name: str) -> None:
        """On the batcher thread: remove `name`; the last one out gives back the plain base model."""
        model = self._batcher.model
        if name not in getattr(model, "peft_config", {}):
            return
        if len(model.peft_config) == 1:
            self._model = self._batcher.model = model.unload().eval()  # the LoRA layers removed, base weights as they were
        else:
            model.delete_adapter(name)

    # generation --------------------------------------------------------------------------------

    async def abort(self, request_id: str) -> None:
        for stream in self._streams.get(request_id, ()):
            self._abort_stream(stream)

    def _abort_stream(self, stream: _Stream) -> None:
        if stream.seq is not None and self._batcher is not None:
            self._batcher.cancel(stream.seq)  # frees its place in the batch now
        stream.queue.put_nowait(("abort", None))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        if request.model not in self._names and request.model not in self._adapters:
            served = ", ".join(repr(n) for n in [self.model_id, *self._adapters])
            raise RequestError(f"model {request.model!r} is not served here (this engine serves {served})",
                               status=404, code="model_not_found", param="model")
        adapter = request.model if request.model in self._adapters else None
        self._check_running()
        params = check_sampling(request.sampling)
        input_ids = await asyncio.to_thread(self._encode, request)
        self._check_running()  # closed while encoding
        prompt_len = len(input_ids)
        room = self._context_length - prompt_len
        if room < 1:
            raise RequestError(f"the prompt is {prompt_len} tokens but {self.model_id} has a context of "
                               f"{self._context_length} tokens; shorten the prompt", status=400,
                               param="messages" if request.messages else "prompt", code="context_length_exceeded")
        # A max_tokens beyond the context is cut to fit and ends with "length", as a long answer would.
        max_new = min(params.max_tokens or room, room)
        matcher = None
        if params.guide is not None:
            matcher = await asyncio.to_thread(self._matcher, params.guide, request.continuation)

        batcher = self._batcher
        stream = _Stream(asyncio.get_running_loop())
        sampler = sampler_for(params, input_ids, matcher)  # records log probabilities when they are asked for
        logprobs = LogprobTracker(sampler, self._tokenizer, skip_ids=self._eos_ids)
        stream.seq = Sequence(request.request_id, input_ids, max_new, sampler, stream.push, adapter=adapter)
        out = DeltaAssembler(self._tokenizer, stop=params.stop, prompt_tokens=prompt_len, max_new=max_new,
                             eos_ids=self._eos_ids)
        self._streams.setdefault(request.request_id, []).append(stream)
        try:
            batcher.submit(stream.seq)
            ended = False
            while True:
                kind, payload = await stream.queue.get()
                if kind == "abort":
                    break
                if kind == "error":
                    raise EngineError(f"model {self.model_id}: generation failed: {payload}") from payload
                if kind == "end":
                    ended = True
                    break
                delta = out.add(payload)
                if out.stopped:
                    break
                if delta is not None:
                    yield logprobs.attach(delta)
            batcher.cancel(stream.seq)  # free the place before the consumer reads the last delta
            yield logprobs.attach(out.finish(ended))
        finally:
            # Reached on normal end, on aclose() and on cancellation alike: the sequence leaves the
            # batch before the next decode step.
            batcher.cancel(stream.seq)
            streams = self._streams.get(request.request_id, [])
            self._streams[request.request_id] = [s for s in streams if s is not stream]
            if not self._streams[request.request_id]:
                del self._streams[request.request_id]

    def _matcher(self, guide, continuation: str):
        if self._grammars is None:
            from cynode.engines.guided import GrammarCache  # xgrammar: only once a guided request comes

            vocab = int(getattr(self._model.config, "vocab_size", 0) or len(self._tokenizer))
            self._grammars = GrammarCache(self._tokenizer, vocab, self._eos_ids)
        return self._grammars.matcher(guide, continuation)

    def _check_running(self) -> None:
        if self._batcher is None or self._closed:
            raise EngineError(f"engine for {self.model_id} is {'closed' if self._closed else 'not started'}",
                              retryable=True)

    def _encode(self, request: GenerationRequest) -> list[int]:
        if request.messages and request.prompt is not None:
            raise RequestError("give either messages or prompt, not both", status=400, param="messages")
        with self._encode_lock:
            if request.prompt is not None:
                return list(self._tokenizer(request.prompt + request.continuation)["input_ids"])
            if not request.messages:
                raise RequestError("messages is empty and no prompt was given", status=400, param="messages")
            conversation, args = chat_template_args(request.messages, request.tools, self._native_tools)
            try:
                if request.continuation:
                    # A migrated request: the answer so far follows the rendered prompt as plain text.
                    text = self._tokenizer.apply_chat_template(conversation, **args, add_generation_prompt=True,
                                                               tokenize=False)
                    return list(self._tokenizer(text + request.continuation, add_special_tokens=False)["input_ids"])
                encoded = self._tokenizer.apply_chat_template(conversation, **args, add_generation_prompt=True,
                                                              tokenize=True)
            except TemplateError as exc:
                raise RequestError(f"messages do not fit {self.model_id}'s chat template: {exc}",
                                   status=400, param="messages") from exc
        # transformers 5 returns a BatchEncoding here, 4.x a plain list of ids.
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return list(ids)

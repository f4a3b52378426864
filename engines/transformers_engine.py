"""HF transformers inference engine: one model, plain `generate`, one thread per running request.

Each running request owns a thread from a bounded pool (`max_concurrency`; more requests wait for a
slot in FIFO order). The thread runs `model.generate` for one sequence; a streamer hands each new
token id back to the event loop with `call_soon_threadsafe`, and a stopping criterion polls the
request's cancel event between decoding steps, so an abort or a vanished client costs at most one
more forward pass. Several `generate` calls on one model are safe for inference, and torch releases
the GIL inside its kernels, so concurrent requests overlap rather than queue.

Sampling never uses HF's own `do_sample`, which draws from torch's process-wide RNG: concurrent
requests would consume each other's random numbers and no seed could be repeatable. Instead
`_Sampler` draws from a per-request `torch.Generator` (seeded from the request, or randomly) and
leaves only the drawn token for HF's greedy pick. Seeded requests are thus repeatable while other
requests run, with no global lock.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from jinja2.exceptions import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation import (
    LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList,
    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging as hf_logging

from cynode.engines.base import (
    EngineHealth, GenerationRequest, InferenceEngine, ModelCard, SamplingParams, TokenDelta, Usage,
)
from cynode.errors import EngineError, RequestError


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas that never need taking back.

    Each step decodes only a short window (vLLM's prefix/read offsets), so a long answer costs the
    event loop the same per token as a short one, while multi-token characters and tokenizer spacing
    still come out as a full decode would give them. Held back until more tokens decide them: an
    incomplete UTF-8 character (decoded as U+FFFD) and any tail that could start a stop string.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""  # decoded so far; cut before the stop string once one appears
        self.sent = 0  # characters of `text` already handed out
        self.stopped = False
        self._prefix = self._read = 0  # window: ids[_prefix:_read] are decoded into `text` already

    def add(self, ids: list[int]) -> str:
        """Take new ids; return the text that became safe to show."""
        if self.stopped:
            return ""
        self.ids.extend(ids)
        self._decode(final=False)
        # A stop string can only start at or after `sent`: any earlier start would have been held back.
        cut = min((i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self.text = True, self.text[:cut]
            return ""  # flush() hands out the rest
        end = len(self.text)
        end -= max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        if end <= self.sent:
            return ""
        new, self.sent = self.text[self.sent:end], end
        return new

    def flush(self) -> str:
        """The held-back tail: the stream ends, so nothing more can complete it."""
        if not self.stopped:
            self._decode(final=True)
        new, self.sent = self.text[self.sent:], len(self.text)
        return new

    def _decode(self, final: bool) -> None:
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        window = decode(self.ids[self._prefix:], skip_special_tokens=True)
        if len(window) > len(before) and (final or not window.endswith("\ufffd")):
            self.text += window[len(before):]
            self._prefix, self._read = self._read, len(self.ids)


class _Run:
    """One request: what its stream (on the loop) and its generation thread share."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.loop = loop
        self.cancel = threading.Event()  # polled by the generation thread between steps
        self.aborted = asyncio.Event()  # abort()/close() ended it: the stream says "abort"
        self.queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()

    def push(self, kind: str, payload: object = None) -> None:
        """Thread side: hand an event to the stream; a closed loop means nobody listens any more."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))
        except RuntimeError:
            self.cancel.set()


class _Streamer(BaseStreamer):
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate hands over the prompt first; the stream wants new tokens only
            self.prompt_seen = True
            return
        self.run.push("tokens", value.reshape(-1).tolist())

    def end(self) -> None:
        pass  # the thread reports the end itself, after errors too


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _PresenceFrequencyPenalty(LogitsProcessor):
    """OpenAI's penalties, counted over the generated tokens only (as vLLM does)."""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_len:]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class _Sampler(LogitsProcessor):
    """Draws the next token with the request's own generator; see the module docstring for why."""

    def __init__(self, params: SamplingParams, generator: torch.Generator) -> None:
        self.generator = generator
        self.warpers = LogitsProcessorList([TemperatureLogitsWarper(params.temperature)])
        if params.top_k > 0:
            self.warpers.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(params.top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(self.warpers(input_ids, scores), dim=-1)
        picked = torch.multinomial(probs, 1, generator=self.generator)
        return torch.full_like(scores, float("-inf")).scatter_(1, picked, 0.0)


def _check_sampling(s: SamplingParams) -> None:
    for param, bad, rule in (("temperature", s.temperature < 0, "must be >= 0"),
                             ("top_p", not 0.0 < s.top_p <= 1.0, "must be in (0, 1]"),
                             ("top_k", s.top_k < 0, "must be >= 0 (0 means no top-k cut)"),
                             ("max_tokens", s.max_tokens is not None and s.max_tokens < 1, "must be >= 1"),
                             ("repetition_penalty", s.repetition_penalty <= 0, "must be > 0")):
        if bad:
            raise RequestError(f"{param} {rule}, got {getattr(s, param)!r}", status=400, param=param)


class TransformersEngine(InferenceEngine):
    """Serves one model folder (safetensors + tokenizer) with HF transformers on CPU or CUDA."""

    def __init__(self, model_dir: Path, model_id: str, *, aliases: tuple[str, ...] = (),
                 backend: str = "cpu-transformers", device: str = "cpu", dtype: str = "float32",
                 max_concurrency: int = 8) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.model_dir = Path(model_dir)
        self.model_id = model_id
        self.aliases = tuple(aliases)
        self.backend = backend
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_concurrency = max_concurrency
        self._names = {model_id, *self.aliases}
        self._model = None
        self._tokenizer = None
        self._context_length = 0
        self._eos_ids: frozenset[int] = frozenset()
        # Fast tokenizers are Rust objects that raise "Already borrowed" under concurrent mutation.
        self._encode_lock = threading.Lock()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._runs: dict[str, list[_Run]] = {}
        self._threads: set[asyncio.Future] = set()
        self._closed = False

    # lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._model is not None:
            return
        if self._closed:
            raise EngineError(f"engine for {self.model_id} is closed")
        await asyncio.to_thread(self._load)
        self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix=f"gen-{self.model_id}")

    def _load(self) -> None:
        if not (self.model_dir / "config.json").is_file():
            raise EngineError(f"model {self.model_id}: {self.model_dir} has no config.json (not a model folder)")
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise EngineError(f"model {self.model_id}: unknown dtype {self.dtype!r} (try float32 or bfloat16)")
        hf_logging.disable_progress_bar()  # progress bars would flood the daemon's log
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype, local_files_only=True)
            model.to(self.device).eval()
        except Exception as exc:
            raise EngineError(f"model {self.model_id}: loading {self.model_dir} on {self.device} failed: {exc}") from exc
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self._eos_ids = frozenset(eos_ids - {None})
        self._context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self._tokenizer, self._model = tokenizer, model

    async def close(self) -> None:
        self._closed = True
        for runs in list(self._runs.values()):
            for run in runs:
                self._abort_run(run)
        if self._threads:  # each stops within one decoding step once cancelled
            await asyncio.wait(set(self._threads), timeout=30)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._model = self._tokenizer = None

    # status ------------------------------------------------------------------------------------

    @property
    def active_requests(self) -> int:
        """Requests holding a generation slot (their thread still runs)."""
        return len(self._threads)

    @property
    def waiting_requests(self) -> int:
        return sum(len(runs) for runs in self._runs.values()) - self.active_requests

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
                          aliases=self.aliases, loaded=self._model is not None)]

    # generation --------------------------------------------------------------------------------

    async def abort(self, request_id: str) -> None:
        for run in self._runs.get(request_id, ()):
            self._abort_run(run)

    def _abort_run(self, run: _Run) -> None:
        run.cancel.set()
        run.aborted.set()
        run.queue.put_nowait(("abort", None))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        if request.model not in self._names:
            raise RequestError(f"model {request.model!r} is not served here (this engine serves {self.model_id!r})",
                               status=404, code="model_not_found", param="model")
        if self._model is None or self._closed:
            raise EngineError(f"engine for {self.model_id} is {'closed' if self._closed else 'not started'}",
                              retryable=True)
        params = request.sampling
        _check_sampling(params)
        input_ids = await asyncio.to_thread(self._encode, request)
        prompt_len = len(input_ids)
        room = self._context_length - prompt_len
        if room < 1:
            raise RequestError(f"the prompt is {prompt_len} tokens but {self.model_id} has a context of "
                               f"{self._context_length} tokens; shorten the prompt", status=400,
                               param="messages" if request.messages else "prompt", code="context_length_exceeded")
        # A max_tokens beyond the context is cut to fit and ends with "length", as a long answer would.
        max_new = min(params.max_tokens or room, room)

        loop = asyncio.get_running_loop()
        run = _Run(request.request_id, loop)
        self._runs.setdefault(run.request_id, []).append(run)
        detok = IncrementalDetokenizer(self._tokenizer, params.stop)
        pending: list[int] = []
        finish = "abort"
        try:
            if await self._take_slot(run):
                thread = loop.run_in_executor(self._pool, self._generate_blocking, run, input_ids, max_new, params)
                self._threads.add(thread)
                thread.add_done_callback(self._slot_freed)
                while True:
                    kind, payload = await run.queue.get()
                    if kind == "abort":
                        break
                    if kind == "error":
                        raise EngineError(f"model {self.model_id}: generation failed: {payload}") from payload
                    if kind == "end":
                        finish = self._finish_reason(detok, max_new)
                        # The thread is returning: wait the moment it takes, so active_requests is
                        # exact once the last delta is out (shielded: our cancellation must not
                        # mark it done while it still holds a pool thread).
                        await asyncio.shield(thread)
                        self._slot_freed(thread)
                        break
                    pending.extend(payload)
                    text = detok.add(payload)
                    if detok.stopped:
                        finish = "stop"
                        break
                    if text:
                        yield TokenDelta(text=text, token_ids=tuple(pending))
                        pending = []
            run.cancel.set()  # free the slot before the consumer reads the last delta
            usage = Usage(prompt_tokens=prompt_len, completion_tokens=self._completion_tokens(detok))
            yield TokenDelta(text=detok.flush(), token_ids=tuple(pending), finish_reason=finish, usage=usage)
        finally:
            # Reached on normal end, on aclose() and on cancellation alike: the thread stops at its
            # next step and its slot is released when it returns (_slot_freed).
            run.cancel.set()
            runs = self._runs.get(run.request_id, [])
            self._runs[run.request_id] = [r for r in runs if r is not run]
            if not self._runs[run.request_id]:
                del self._runs[run.request_id]

    def _finish_reason(self, detok: IncrementalDetokenizer, max_new: int) -> str:
        if detok.ids and detok.ids[-1] in self._eos_ids:
            return "stop"
        return "length" if len(detok.ids) >= max_new else "abort"

    def _completion_tokens(self, detok: IncrementalDetokenizer) -> int:
        # Tokens the model produced for this answer, not counting a final EOS: it is never shown, and
        # OpenAI-style usage counts text tokens. After a stop string, tokens up to the one completing it.
        ids = detok.ids
        return len(ids) - 1 if ids and ids[-1] in self._eos_ids else len(ids)

    async def _take_slot(self, run: _Run) -> bool:
        """Wait for a generation slot; False when the request was aborted first."""
        acquire = asyncio.ensure_future(self._slots.acquire())
        aborted = asyncio.ensure_future(run.aborted.wait())
        try:
            await asyncio.wait((acquire, aborted), return_when=asyncio.FIRST_COMPLETED)
        finally:
            aborted.cancel()
            got = acquire.done() and not acquire.cancelled() and acquire.exception() is None
            if not got or run.aborted.is_set():
                # Give the slot back whenever acquire ends up holding it, even after our own cancellation.
                acquire.cancel()
                acquire.add_done_callback(
                    lambda t: self._slots.release() if not t.cancelled() and t.exception() is None else None)
                got = False
        return got

    def _slot_freed(self, thread: asyncio.Future) -> None:
        """Idempotent: the stream calls it as soon as it sees the thread end, the done callback later."""
        if thread in self._threads:
            self._threads.discard(thread)
            self._slots.release()

    def _encode(self, request: GenerationRequest) -> list[int]:
        if request.messages and request.prompt is not None:
            raise RequestError("give either messages or prompt, not both", status=400, param="messages")
        with self._encode_lock:
            if request.prompt is not None:
                return list(self._tokenizer(request.prompt)["input_ids"])
            if not request.messages:
                raise RequestError("messages is empty and no prompt was given", status=400, param="messages")
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            try:
                encoded = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            except TemplateError as exc:
                raise RequestError(f"messages do not fit {self.model_id}'s chat template: {exc}",
                                   status=400, param="messages") from exc
        # transformers 5 returns a BatchEncoding here, 4.x a plain list of ids.
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return list(ids)

    def _generate_blocking(self, run: _Run, input_ids: list[int], max_new: int, params: SamplingParams) -> None:
        """Runs on a pool thread; reports everything through `run.push`, never raises."""
        try:
            ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)
            processors = LogitsProcessorList()
            if params.presence_penalty or params.frequency_penalty:
                processors.append(_PresenceFrequencyPenalty(len(input_ids), params.presence_penalty,
                                                            params.frequency_penalty))
            if not params.greedy:
                generator = torch.Generator(device=self.device)
                if params.seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(params.seed)
                processors.append(_Sampler(params, generator))
            with torch.inference_mode():
                self._model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                    do_sample=False, repetition_penalty=params.repetition_penalty,
                    eos_token_id=sorted(self._eos_ids) or None, pad_token_id=self._tokenizer.pad_token_id,
                    logits_processor=processors, stopping_criteria=StoppingCriteriaList([_Cancelled(run.cancel)]),
                    streamer=_Streamer(run),
                )
        except Exception as exc:  # translated to EngineError on the loop, where the stream can raise it
            run.push("error", exc)
        else:
            run.push("end")

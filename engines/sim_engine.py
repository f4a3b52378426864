"""The `sim` engine: streams made-up words at a set pace, with no model. For benchmarks only.

It measures what cynode itself costs (gateway, coordinator, worker, gRPC, SSE) against an engine whose
cost is known exactly: once a request has one of the `max_concurrency` slots, its first token comes
`ttft` seconds later and then one token every `1 / tokens_per_second` seconds, each due at a fixed time
from the start so slow consumers do not make it drift. Any throughput the stack loses beyond that is
cynode's own overhead.

It is never a default: `select_backend("auto")` never picks it; it is built only when asked for by
name, with `create_engine("sim", ...)` or `backend = "sim"` in node.toml, and serves the model id
`sim`. Its answers are not language: the same words cycle for every request, `answer_tokens` of them
and then an end-of-text token (finish "stop"), fewer when `max_tokens` cuts it ("length"). Stop
strings, abort, usage and the 404/400 refusals behave as in the real engines (it shares their
detokenizer), so the stack cannot tell the difference except by the text.

Constrained output it cannot honour, having no model to constrain: a guided request
(`response_format` json_object/json_schema, `tool_choice` required or a named function) is refused
with a 400 naming the parameter, never answered with made-up words. `tools` with tool_choice "auto"
are accepted (the answer, its words, simply calls nothing).

Time comes from a `Clock`, so tests step it without sleeping.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from typing import Protocol

from cynode.engines.base import EngineHealth, GenerationRequest, InferenceEngine, ModelCard, TokenDelta, Usage
from cynode.engines.detokenizer import DeltaAssembler
from cynode.engines.base import check_sampling
from cynode.errors import EngineError, RequestError

WORDS = (" The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ",", " and",
         " the", " cat", " sleeps", " on", " the", " warm", " mat", ".")


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""

    async def sleep(self, seconds: float) -> None:
        """Return after `seconds`; may be cancelled."""


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class WordTokenizer:
    """Token i is WORDS[i]; `eos_id` ends an answer and decodes to nothing. Prompts count one per word."""

    eos_id = len(WORDS)

    def encode(self, text: str) -> list[int]:
        return [i % len(WORDS) for i, _ in enumerate(text.split())]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(WORDS[i] for i in ids if i != self.eos_id)


class _Stream:
    def __init__(self) -> None:
        self.aborted = False
        self.ticket: asyncio.Future[bool] | None = None  # set while waiting for a slot
        self.sleeper: asyncio.Future | None = None  # set while waiting for the next token


class SimEngine(InferenceEngine):
    """Paced token emitter; see the module docstring. Not a model: benchmarking only."""

    backend = "sim"

    def __init__(self, model_id: str = "sim", *, aliases: tuple[str, ...] = (), ttft: float = 0.05,
                 tokens_per_second: float = 50.0, answer_tokens: int = 64, context_length: int = 8192,
                 max_concurrency: int = 8, clock: Clock | None = None) -> None:
        if ttft < 0 or tokens_per_second <= 0 or answer_tokens < 1 or max_concurrency < 1:
            raise ValueError("sim engine: need ttft >= 0, tokens_per_second > 0, answer_tokens >= 1, "
                             "max_concurrency >= 1")
        self.model_id = model_id
        self.aliases = tuple(aliases)
        self.ttft = ttft
        self.tokens_per_second = tokens_per_second
        self.answer_tokens = answer_tokens
        self.context_length = context_length
        self.max_concurrency = max_concurrency
        self.clock = clock or MonotonicClock()
        self.tokenizer = WordTokenizer()
        self._names = {model_id, *self.aliases}
        self._streams: dict[str, list[_Stream]] = {}
        self._active = 0
        self._waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._started = self._closed = False

    def capacity(self) -> int | None:
        return self.max_concurrency

    async def start(self) -> None:
        if self._closed:
            raise EngineError(f"engine for {self.model_id} is closed")
        self._started = True

    async def close(self) -> None:
        self._closed = True
        for streams in list(self._streams.values()):
            for stream in streams:
                self._abort_stream(stream)

    @property
    def active_requests(self) -> int:
        return self._active

    @property
    def waiting_requests(self) -> int:
        return len(self._waiters)

    def health(self) -> EngineHealth:
        if self._closed or not self._started:
            return EngineHealth(ready=False, detail="closed" if self._closed else "loading",
                                active_requests=self._active)
        return EngineHealth(ready=True, detail="ok (sim: no model)", active_requests=self._active)

    def models(self) -> list[ModelCard]:
        return [ModelCard(id=self.model_id, backend=self.backend, context_length=self.context_length,
                          aliases=self.aliases, loaded=self._started and not self._closed)]

    async def abort(self, request_id: str) -> None:
        for stream in self._streams.get(request_id, ()):
            self._abort_stream(stream)

    def _abort_stream(self, stream: _Stream) -> None:
        stream.aborted = True
        if stream.ticket is not None and not stream.ticket.done():
            stream.ticket.set_result(False)
        if stream.sleeper is not None:
            stream.sleeper.cancel()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        if request.model not in self._names:
            raise RequestError(f"model {request.model!r} is not served here (this engine serves {self.model_id!r})",
                               status=404, code="model_not_found", param="model")
        if not self._started or self._closed:
            raise EngineError(f"engine for {self.model_id} is {'closed' if self._closed else 'not started'}",
                              retryable=True)
        params = check_sampling(request.sampling)
        if params.guide is not None:
            param = "tool_choice" if params.guide.kind == "tool_call" else "response_format"
            raise RequestError(f"the sim engine cannot constrain its output ({param}); serve a real model for it",
                               status=400, param=param, code="unsupported_parameter")
        done = _tokens_in(request.continuation)  # a migrated request picks the cycle up where it was
        prompt_tokens = self._count_prompt(request) + done
        room = self.context_length - prompt_tokens
        if room < 1:
            raise RequestError(f"the prompt is {prompt_tokens} tokens but {self.model_id} has a context of "
                               f"{self.context_length} tokens; shorten the prompt", status=400,
                               param="messages" if request.messages else "prompt", code="context_length_exceeded")
        max_new = min(params.max_tokens or room, room)
        answer = [(done + i) % len(WORDS) for i in range(min(max(self.answer_tokens - done, 0), max_new))]
        if len(answer) < max_new:
            answer.append(self.tokenizer.eos_id)
        if params.stop:  # the real engines' detokenizer, for their stop-string rules
            out = DeltaAssembler(self.tokenizer, stop=params.stop, prompt_tokens=prompt_tokens, max_new=max_new,
                                 eos_ids=(self.tokenizer.eos_id,))
        else:  # every sim token is a whole word: nothing to hold back, so skip the incremental decode
            out = _WordDeltas(prompt_tokens, max_new)
        stream = _Stream()
        self._streams.setdefault(request.request_id, []).append(stream)
        holding = False
        try:
            holding = await self._acquire(stream)
            ended = holding
            start = self.clock.now()
            for k, token in enumerate(answer if holding else ()):
                if not await self._sleep_until(stream, start + self.ttft + k / self.tokens_per_second):
                    ended = False
                    break
                delta = out.add([token])
                if out.stopped:
                    break
                if delta is not None:
                    yield delta
            if holding:  # free the slot before the consumer reads the last delta
                holding = False
                self._release()
            yield out.finish(ended)
        finally:
            if holding:
                self._release()
            streams = self._streams.get(request.request_id, [])
            self._streams[request.request_id] = [s for s in streams if s is not stream]
            if not self._streams[request.request_id]:
                del self._streams[request.request_id]

    async def _sleep_until(self, stream: _Stream, due: float) -> bool:
        """False when the stream was aborted before `due`."""
        if stream.aborted:
            return False
        delay = due - self.clock.now()
        if delay <= 0:
            return True
        stream.sleeper = asyncio.ensure_future(self.clock.sleep(delay))
        try:
            await stream.sleeper
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not stream.aborted or (task is not None and task.cancelling()):
                raise  # our own task is being cancelled, not an abort
        finally:
            stream.sleeper = None
        return not stream.aborted

    async def _acquire(self, stream: _Stream) -> bool:
        """Take a slot, first come first served; False when aborted while waiting."""
        if self._active < self.max_concurrency and not self._waiters:
            self._active += 1
            return True
        ticket = asyncio.get_running_loop().create_future()
        stream.ticket = ticket
        self._waiters.append(ticket)
        try:
            return await asyncio.shield(ticket)
        except asyncio.CancelledError:
            if ticket.done() and ticket.result():
                self._release()  # handed a slot just as we were cancelled: pass it on
            else:
                ticket.cancel()
            raise
        finally:
            stream.ticket = None
            if ticket in self._waiters:  # aborted or cancelled while waiting
                self._waiters.remove(ticket)

    def _release(self) -> None:
        """Hand the slot to the first waiter still waiting, or give it back."""
        while self._waiters:
            ticket = self._waiters.popleft()
            if not ticket.done():
                ticket.set_result(True)
                return
        self._active -= 1

    def _count_prompt(self, request: GenerationRequest) -> int:
        if request.messages and request.prompt is not None:
            raise RequestError("give either messages or prompt, not both", status=400, param="messages")
        if request.prompt is not None:
            return len(self.tokenizer.encode(request.prompt))
        if not request.messages:
            raise RequestError("messages is empty and no prompt was given", status=400, param="messages")
        return sum(len(self.tokenizer.encode(f"{m.role}: {m.content}")) for m in request.messages)


class _WordDeltas:
    """`DeltaAssembler`'s results for the sim's word tokens when no stop string is asked for, at a
    fraction of its cost: the sim should spend as little as it can of what the benchmarks measure."""

    stopped = False

    def __init__(self, prompt_tokens: int, max_new: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_new = max_new
        self.count = 0
        self.eos = False

    def add(self, ids: list[int]) -> TokenDelta | None:
        token = ids[0]
        self.count += 1
        if token == WordTokenizer.eos_id:
            self.eos = True
            return None
        return TokenDelta(text=WORDS[token], token_ids=(token,))

    def finish(self, ended: bool) -> TokenDelta:
        reason = "abort"
        if ended:
            reason = "stop" if self.eos else "length" if self.count >= self.max_new else "abort"
        usage = Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.count - self.eos)
        return TokenDelta(text="", token_ids=(WordTokenizer.eos_id,) if self.eos else (), finish_reason=reason, usage=usage)


def _tokens_in(continuation: str) -> int:
    """How many tokens of the answer cycle `continuation` is (the sim's answers are all that cycle)."""
    count, text = 0, ""
    while len(text) < len(continuation):
        text += WORDS[count % len(WORDS)]
        count += 1
    if text != continuation:
        raise RequestError("resume text is not a sim answer prefix", status=400, param="messages")
    return count

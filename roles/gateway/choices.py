"""One request's choices (`n`, and the prompts of a batched completion), answered as SSE or JSON.

Each choice is a `Completion` of its own through the cluster (its own task, worker and cache
entry); this module runs them side by side and turns their pieces into what the client reads,
through a `Format` (chat chunks or text-completion chunks). One choice, the common case, is read
directly, with no task or queue in between: that is the hot path.

Streams: the first piece decides the answer's status, so an error before it is a plain HTTP error.
A first piece slower than `[gateway] sse_keepalive` no longer waits: the stream starts (200, SSE
headers, `X-Accel-Buffering: no`) and an SSE comment goes out at that interval until the piece
comes, so neither a buffering proxy nor an idle-timeout cuts a slow first token off. From then on a
failure reaches the client as an error event, as it does mid-stream.

A `Framing` says what goes around the chunks (chat and completions: `data: [DONE]` at the end, a
failure as an `error` data event; the Responses API: typed events, no `[DONE]`), and a `sink` may
take the stream's bytes instead of an HTTP response (the WebSocket endpoint, `chat_ws.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from cynode.api_keys import ApiKey
from cynode.errors import CynodeError

from . import openai_format as fmt
from .completion import Completion
from .degraded import DEGRADED_HEADER
from .limits import estimate_tokens
from .state import GatewayState

log = logging.getLogger(__name__)

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_END = object()


@dataclass
class Choice:
    """One choice: its completion, and (for a batched completion) which prompt it answers."""

    index: int
    completion: Completion
    prompt_index: int = 0
    prefix: str = ""  # shown before the answer (`echo`: the prompt)
    parts: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)


class Format(Protocol):
    """How one endpoint writes its answer (chat chunks or text-completion chunks)."""

    def encoder(self, request_id: str, model: str, created: int, include_usage: bool, index: int) -> Any:
        """A chunk encoder for one choice (`content`, `finish`, `usage` as in `openai_format`)."""

    def opening(self, encoder: Any, choice: Choice) -> bytes | None:
        """The chunk a choice starts with, if any (chat: the role; completions: the echoed prompt)."""

    def logprobs(self, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The `logprobs` object of a choice (or a chunk) from token entries; None when none were asked for."""

    def whole(self, request_id: str, model: str, created: int, choices: list[Choice],
              usage: dict[str, int]) -> dict[str, Any]:
        """The non-streamed body."""


class Framing(Protocol):
    """What goes around a stream's chunks, and what runs when its choices are complete."""

    done: bytes  # the stream's last bytes (b"": none)

    async def completed(self, choices: list[Choice]) -> None:
        """Every choice is complete; runs before the client is sent the end of the answer (so what it
        does, such as storing the answer, is done by the time the client has read it)."""

    def error(self, request_id: str, exc: CynodeError) -> bytes:
        """The event(s) a failure after the first byte is sent as."""


class ChunkFraming:
    """OpenAI's chunk streams (chat, completions)."""

    done = fmt.SSE_DONE

    async def completed(self, choices: list[Choice]) -> None:
        return None

    def error(self, request_id: str, exc: CynodeError) -> bytes:
        return fmt.sse_event({"error": {"message": exc.message, "type": "server_error", "param": None,
                                        "code": exc.code or "upstream_failed"}}) + fmt.SSE_DONE


CHUNKS = ChunkFraming()


def usage_of(choices: list[Choice]) -> dict[str, int]:
    """Prompt tokens counted once per prompt (its `n` choices read the same prompt), completion tokens summed."""
    prompts: dict[int, int] = {}
    for choice in choices:
        prompts[choice.prompt_index] = max(prompts.get(choice.prompt_index, 0), choice.completion.prompt_tokens)
    return fmt.usage_dict(sum(prompts.values()), sum(c.completion.completion_tokens for c in choices))


def cache_header(choices: list[Choice]) -> dict[str, str]:
    """`X-Cache: hit` when every choice came from the prompt cache, `miss` when one did not; left out
    while not yet known (a stream that had to start before the coordinator answered). A choice served
    without a coordinator adds `X-Cynode-Degraded: true`."""
    headers = {DEGRADED_HEADER: "true"} if any(c.completion.degraded for c in choices) else {}
    if all(c.completion.cached for c in choices):
        headers["X-Cache"] = "hit"
    elif any((c.completion.admitted or c.completion.degraded) and not c.completion.cached for c in choices):
        headers["X-Cache"] = "miss"
    return headers


async def answer(request: web.Request, state: GatewayState, key: ApiKey, request_id: str, choices: list[Choice],
                 form: Format, *, prompt_chars: int, max_tokens: int | None, stream: bool,
                 include_usage: bool, framing: Framing = CHUNKS,
                 sink: web.StreamResponse | None = None) -> web.StreamResponse:
    """Charge the key's limits, run every choice and answer the client; records each choice's outcome
    in the metrics and settles the key's usage with what the choices really used. `sink`: where a
    stream is written instead of a new HTTP response (it is prepared and written like one)."""
    estimate = sum(estimate_tokens(prompt_chars, max_tokens) for _ in choices)
    admission = await state.admit(request, key, request_id, estimate)
    started = time.monotonic()
    events = _events(choices)
    outcome = "failed"
    try:
        if stream:
            response, delivered = await _stream(request, state, request_id, choices, form, include_usage, events,
                                                started, framing, sink)
        else:
            response, delivered = await _collect(state, request_id, choices, form, events, started, framing), True
        outcome = "ok" if delivered else "cancelled"
        return response
    except BaseException as exc:
        if not isinstance(exc, CynodeError):
            outcome = "cancelled"  # the client went away (or the gateway is stopping)
        raise
    finally:
        await events.aclose()
        for choice in choices:
            state.record(choice.completion.outcome if outcome == "ok" else outcome, choice.completion.completion_tokens)
        if admission is not None:
            admission.settle(sum(c.completion.prompt_tokens for c in choices),
                             sum(c.completion.completion_tokens for c in choices))


async def _events(choices: list[Choice]) -> AsyncIterator[tuple[Choice, Any]]:
    """(choice, piece) as they come, then (choice, _END) when that choice is complete. A CynodeError
    of any choice is raised here (Completion raises only before its first piece)."""
    if len(choices) == 1:
        choice = choices[0]
        pieces = choice.completion.deltas()
        try:
            async for piece in pieces:
                yield choice, piece
        finally:
            await pieces.aclose()
        yield choice, _END
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def run(choice: Choice) -> None:
        try:
            async for piece in choice.completion.deltas():
                queue.put_nowait((choice, piece))
            queue.put_nowait((choice, _END))
        except Exception as exc:  # noqa: BLE001  (raised again by the consumer, which owns the answer)
            queue.put_nowait((choice, exc))

    tasks = [asyncio.create_task(run(choice), name=f"choice-{choice.index}") for choice in choices]
    try:
        for _ in choices:
            while True:
                choice, item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield choice, item
                if item is _END:
                    break
    finally:
        for task in tasks:
            task.cancel()  # the client went away, or one choice failed: the others' work is wasted
        await asyncio.gather(*tasks, return_exceptions=True)


def _take(choice: Choice, piece: str) -> list[dict[str, Any]]:
    """Record a piece (and its tokens' log probabilities) on its choice; returns those entries."""
    choice.parts.append(piece)
    entries = choice.completion.take_logprobs()
    if entries:
        choice.logprobs.extend(entries)
    return entries


async def _collect(state: GatewayState, request_id: str, choices: list[Choice], form: Format, events,
                   started: float, framing: Framing) -> web.Response:
    first = True
    async for choice, item in events:
        if first:
            state.metrics.ttft.observe(time.monotonic() - started)
            first = False
        if item is not _END:
            _take(choice, item)
    await framing.completed(choices)
    model = choices[0].completion.model
    body = form.whole(request_id, model, int(time.time()), choices, usage_of(choices))
    return web.Response(body=fmt.json_bytes(body), content_type="application/json",
                        headers={"X-Request-Id": request_id, **cache_header(choices)})


async def _first(events, keepalive: float, on_wait: Callable[[], Any]):
    """The first event, running `on_wait()` (which may start the response) every `keepalive` seconds
    until it comes. Returns None when the events end with none."""
    pending = asyncio.ensure_future(anext(events, None))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=keepalive)
            if done:
                return pending.result()
            await on_wait()
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


async def _stream(request: web.Request, state: GatewayState, request_id: str, choices: list[Choice], form: Format,
                  include_usage: bool, events, started: float, framing: Framing,
                  sink: web.StreamResponse | None) -> tuple[web.StreamResponse, bool]:
    """The answer as server-sent events, and whether it reached the client (False: it went away)."""
    response = sink if sink is not None else web.StreamResponse(headers={**SSE_HEADERS, "X-Request-Id": request_id})
    try:
        async def keep_alive() -> None:
            if not response.prepared:
                response.headers.update(cache_header(choices))
                await response.prepare(request)
            await response.write(fmt.SSE_KEEPALIVE)

        try:
            first = await _first(events, state.config.sse_keepalive, keep_alive)
        except CynodeError as exc:
            if not response.prepared:
                raise  # nothing sent yet: a plain HTTP error
            await _stream_error(response, request_id, exc, framing)
            return response, True
        state.metrics.ttft.observe(time.monotonic() - started)
        if not response.prepared:
            response.headers.update(cache_header(choices))
            await response.prepare(request)
        created = int(time.time())
        model = choices[0].completion.model
        encoders = {}
        write = response.write
        for choice in choices:
            encoders[choice.index] = encoder = form.encoder(request_id, model, created, include_usage, choice.index)
            opening = form.opening(encoder, choice)
            if opening:
                await write(opening)
        unfinished = len(choices)
        try:
            item = first
            while item is not None:
                choice, piece = item
                encoder = encoders[choice.index]
                if piece is _END:
                    unfinished -= 1
                    if not unfinished:
                        await framing.completed(choices)
                    await write(encoder.finish(choice.completion.finish_reason))
                else:
                    entries = _take(choice, piece)
                    await write(encoder.content(piece, form.logprobs(entries) if entries else None))
                item = await anext(events, None)
            if include_usage:
                usage = usage_of(choices)
                await write(encoders[0].usage(usage["prompt_tokens"], usage["completion_tokens"]))
        except CynodeError as exc:
            await _stream_error(response, request_id, exc, framing)
            return response, True
        if framing.done:
            await write(framing.done)
        await response.write_eof()
    except ConnectionError:
        return response, False  # closing the events cancels the work
    return response, True


async def _stream_error(response: web.StreamResponse, request_id: str, exc: CynodeError, framing: Framing) -> None:
    # Past the first byte the status is sent; the failure travels as an error event.
    log.warning("stream %s failed: %s", request_id, exc.message)
    await response.write(framing.error(request_id, exc))
    await response.write_eof()

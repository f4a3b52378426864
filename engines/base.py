"""The inference engine interface every backend implements.

An engine owns one or more models and turns a `GenerationRequest` into an async stream of
`TokenDelta`s. Contract for implementers:
- `generate` must never block the event loop: model work runs on the engine's own threads or
  processes, and results cross back with `loop.call_soon_threadsafe`.
- Closing the `generate` iterator early (the client went away) aborts the request and frees its
  slot at once; `abort(request_id)` does the same from elsewhere.
- The last delta of a stream carries `finish_reason` ("stop", "length" or "abort") and `usage`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from cynode.errors import RequestError
from cynode.inference import ChatMessage, TokenLogprob, Usage
from cynode.sampling import SamplingParams

__all__ = ["ChatMessage", "EngineHealth", "GenerationRequest", "InferenceEngine", "ModelCard", "SamplingParams",
           "ServesAdapters", "TokenDelta", "Usage", "check_sampling"]


def check_sampling(s: SamplingParams) -> SamplingParams:
    """`s` resolved to concrete values (the rules' defaults where not given); refuses values the
    rules do not allow, naming the parameter (a 400 for the client)."""
    problems = s.problems()
    if problems:
        param, code, rule = problems[0]
        raise RequestError(f"{param} {rule}, got {getattr(s, param, None)!r}", status=400, param=param, code=code)
    return s.resolved()


@dataclass(frozen=True)
class GenerationRequest:
    """Exactly one of `messages` (chat, rendered with the model's chat template) or `prompt`.

    `continuation` is text the model already produced for this request on another worker (a
    migration): it goes right after the rendered prompt, as the start of the answer, and the
    engine generates what follows. It is not streamed again.

    `tools` is OpenAI's `tools` as JSON text ("" for none): the functions the chat template (or,
    for a template without tool support, `chat_prompt`'s own system text) offers the model.
    """

    request_id: str
    model: str
    messages: tuple[ChatMessage, ...] = ()
    prompt: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    continuation: str = ""
    tools: str = ""


@dataclass(frozen=True)
class TokenDelta:
    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    # One per token of `token_ids` when the request asked for log probabilities (sampling.logprobs).
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ModelCard:
    id: str
    backend: str
    context_length: int
    aliases: tuple[str, ...] = ()
    loaded: bool = True
    version: str = ""  # changes whenever the weights do; part of the prompt-cache key


@dataclass(frozen=True)
class EngineHealth:
    ready: bool
    detail: str = "ok"
    active_requests: int = 0


class InferenceEngine(abc.ABC):
    """A swappable inference backend with a lifecycle: start → generate* → close."""

    backend: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Load what the engine needs; raise EngineError naming what is missing if it cannot."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        """Stream the completion of `request`; raise RequestError for an unknown model or bad input."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a running request; its stream ends with finish_reason "abort". Unknown ids are ignored."""

    def capacity(self) -> int | None:
        """Requests the engine generates at once within its memory, once started (more wait in its
        queue); None when it cannot say. The worker admits this many per model (`[worker]
        max_concurrency`, when set, is a ceiling on it) and publishes it in gossip."""
        return None

    def set_kv_budget(self, budget_bytes: int) -> bool:
        """Give the engine's KV cache `budget_bytes` from now on (the worker splits its memory budget
        between the models it has loaded and calls this when that split changes); `capacity()`
        follows. Running requests are not dropped: an engine over its new budget preempts, as it does
        under memory pressure. False when the engine sizes its cache itself (vLLM pre-allocates its
        own; the sim engine has none), so it takes no share of the budget."""
        return False

    def own_kv_bytes(self) -> int:
        """Bytes of KV cache an engine that sizes its own (see set_kv_budget) holds outside any
        share, e.g. vLLM's pre-allocated CPU cache; the worker counts them in the model's footprint."""
        return 0

    @abc.abstractmethod
    def health(self) -> EngineHealth:
        """Readiness and load, cheap enough to call on every health check."""

    @abc.abstractmethod
    def models(self) -> list[ModelCard]:
        """Models this engine serves."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Abort what runs and release memory and threads; safe to call twice."""


@runtime_checkable
class ServesAdapters(Protocol):
    """An engine that serves LoRA adapters over its base model, each under its own model id, loaded
    and replaced while it runs (no restart). The MemoryManager calls these; requests then name the
    adapter's id as their `model`. Both must be safe while other requests generate."""

    async def load_adapter(self, name: str, path: Path) -> None:
        """Serve the PEFT adapter folder `path` as model id `name`; loading a name again replaces it."""

    async def unload_adapter(self, name: str) -> None:
        """Stop serving `name` and free its memory (the caller has let its requests finish)."""

"""What an engine that embeds text offers (a capability, as vLLM's `SupportsLoRA`): importable without torch.

The worker's `Embed` call asks the model's engine for this; a chat engine does not have it and the
client hears so (400), and an embedding engine refuses `generate` the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Embeddings", "SupportsEmbedding"]


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]  # one per input, in order, L2-normalised when the model says so
    prompt_tokens: int  # tokens read, special tokens included


@runtime_checkable
class SupportsEmbedding(Protocol):
    dimensions: int

    async def embed(self, texts: list[str], *, dimensions: int | None = None) -> Embeddings:
        """Embed `texts`; raise RequestError (400) for an input too long or dimensions it cannot give.
        Must not block the event loop."""

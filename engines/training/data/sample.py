"""The one canonical sample every format converts to, and its tokenized form.

A sample is a sequence of segments, each marked trainable or not. Plain-text formats give segments
without a role (concatenated as they are); chat formats give one segment per message, with its role,
rendered later through the tokenizer's chat template; the `tokenized` format gives token ids. A
preference sample adds `rejected`: the other completion, which follows the same prompt (the
segments before the first trainable one).
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100  # label of a token the loss skips (torch's cross_entropy default)


@dataclass(frozen=True)
class Segment:
    text: str = ""
    train: bool = False
    role: str | None = None
    """system, user, assistant or tool for chat segments; None for plain text."""
    token_ids: tuple[int, ...] | None = None
    """Set (instead of text) by the `tokenized` format."""


@dataclass(frozen=True)
class Sample:
    segments: tuple[Segment, ...]
    rejected: tuple[Segment, ...] | None = None
    file: str = ""
    row: int = 0
    """Where the sample came from (1-based row), for error messages."""
    eos: bool = False
    """Plain-text formats: the tokenizer's EOS token ends the sequence (and the completion) and is trained."""

    @property
    def source(self) -> str:
        return f"{self.file}: row {self.row}"

    @property
    def chat(self) -> bool:
        return any(s.role is not None for s in self.segments)

    @property
    def prompt(self) -> tuple[Segment, ...]:
        """The segments before the first trainable one."""
        for i, seg in enumerate(self.segments):
            if seg.train:
                return self.segments[:i]
        return self.segments

    @property
    def chosen(self) -> tuple[Segment, ...]:
        return self.segments[len(self.prompt):]


@dataclass(frozen=True)
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]
    """input_ids where the loss applies, IGNORE_INDEX elsewhere (not shifted)."""
    truncated: bool = False
    position_ids: list[int] | None = None
    """Set on packed sequences: positions restart at 0 at each packed sample."""

    @property
    def loss_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


@dataclass(frozen=True)
class TokenizedPair:
    """A preference sample: both sequences share the prompt's tokens."""

    chosen: TokenizedSample
    rejected: TokenizedSample

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated

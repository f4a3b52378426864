"""From generated token ids to what a client sees: text deltas, stop strings, finish reason and usage.

`IncrementalDetokenizer` turns a growing list of ids into text that never needs taking back;
`DeltaAssembler` wraps it for one stream and builds the `TokenDelta`s of the engine interface. Both
run on the event loop, beside the stream they serve: decoding a short window costs microseconds, and
the scheduler thread then only ever moves token ids.

Anything with the tokenizer's `decode(ids, skip_special_tokens=True)` works, which lets the `sim`
engine reuse the same stop-string rules with its own word list.
"""

from __future__ import annotations

from collections.abc import Iterable

from cynode.engines.base import TokenDelta, Usage


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


class DeltaAssembler:
    """One stream's output: token ids in, `TokenDelta`s out, the last one with finish reason and usage.

    Ids that produced no visible text yet (held back, or special) ride along with the next delta, so
    every id reaches the client exactly once.
    """

    def __init__(self, tokenizer, *, stop: tuple[str, ...], prompt_tokens: int, max_new: int,
                 eos_ids: Iterable[int] = ()) -> None:
        self.detok = IncrementalDetokenizer(tokenizer, stop)
        self.prompt_tokens = prompt_tokens
        self.max_new = max_new
        self.eos_ids = frozenset(eos_ids)
        self._pending: list[int] = []

    @property
    def stopped(self) -> bool:
        """A stop string appeared: the stream is over, and the text stops before it."""
        return self.detok.stopped

    def add(self, ids: list[int]) -> TokenDelta | None:
        """A delta when the new ids made text safe to show, else None (the ids wait for the next one)."""
        self._pending.extend(ids)
        text = self.detok.add(ids)
        if self.detok.stopped or not text:
            return None
        delta = TokenDelta(text=text, token_ids=tuple(self._pending))
        self._pending = []
        return delta

    def finish(self, ended: bool) -> TokenDelta:
        """The last delta. `ended`: the generator finished on its own (end of text or max tokens);
        otherwise it was cut short (abort, close) unless a stop string ended it."""
        reason = "abort"
        if self.detok.stopped:
            reason = "stop"
        elif ended:
            reason = "stop" if self._ends_with_eos() else "length" if len(self.detok.ids) >= self.max_new else "abort"
        usage = Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)
        delta = TokenDelta(text=self.detok.flush(), token_ids=tuple(self._pending), finish_reason=reason, usage=usage)
        self._pending = []
        return delta

    @property
    def completion_tokens(self) -> int:
        # Tokens the model produced for this answer, not counting a final end-of-text: it is never shown,
        # and OpenAI-style usage counts text tokens. After a stop string, tokens up to the one completing it.
        return len(self.detok.ids) - 1 if self._ends_with_eos() else len(self.detok.ids)

    def _ends_with_eos(self) -> bool:
        return bool(self.detok.ids) and self.detok.ids[-1] in self.eos_ids

"""Log probabilities of generated tokens, for the transformers and vLLM engines.

What a client gets (OpenAI `logprobs`/`top_logprobs`, vLLM's default "raw" mode): for each generated
token, its log probability under the model's distribution at that step, before penalties and
temperature, and the `top` most likely tokens there. So the numbers describe the model, not the
sampler, and are the same for a greedy and a sampled request.

- Transformers: `LogprobSampler` wraps the request's `TokenSampler` on the scheduler thread and
  records (token, logprob, top) as it picks; `LogprobTracker` on the event loop turns those records
  into `TokenLogprob`s for the ids of each delta, in order (the scheduler records a token before it
  streams it, so a delta's records are always there).
- vLLM: `from_vllm` converts the `Logprob` maps vLLM returns with each output.

A token's `bytes` are its exact UTF-8 bytes (byte-level BPE tokens may hold part of a character,
which the text can only show as U+FFFD).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import torch

from cynode.engines.base import SamplingParams, TokenDelta
from cynode.engines.sampling import TokenSampler
from cynode.inference import TokenLogprob, TopLogprob

__all__ = ["LogprobSampler", "LogprobTracker", "from_vllm", "sampler_for"]

Record = tuple[int, float, list[tuple[int, float]]]  # (token, logprob, [(alternative, logprob)])


class LogprobSampler(TokenSampler):
    """A `TokenSampler` that also records each picked token's log probability and the top alternatives."""

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int], top: int, matcher=None) -> None:
        super().__init__(params, prompt_ids, matcher)
        self.top = top
        self.records: list[Record] = []  # appended on the scheduler thread, read on the loop

    @property
    def plain_greedy(self) -> bool:
        return False  # the scheduler must hand this row's logits to `pick`

    def pick(self, logits: torch.Tensor) -> int:
        logprobs = torch.log_softmax(logits.detach().to("cpu", torch.float32), dim=-1)
        token = super().pick(logits)
        top: list[tuple[int, float]] = []
        if self.top:
            values, ids = torch.topk(logprobs, self.top)
            top = list(zip(ids.tolist(), values.tolist()))
        self.records.append((token, float(logprobs[token]), top))
        return token


def sampler_for(params: SamplingParams, prompt_ids: Sequence[int], matcher=None) -> TokenSampler:
    """The request's sampler: one that records log probabilities when the request asks for them,
    masked by `matcher` (a guided request's grammar) when there is one."""
    if params.logprobs is None:
        return TokenSampler(params, prompt_ids, matcher)
    return LogprobSampler(params, prompt_ids, params.logprobs, matcher)


class LogprobTracker:
    """Event-loop side: attaches to each delta the log probabilities of its token ids."""

    def __init__(self, sampler: TokenSampler, tokenizer, skip_ids: Iterable[int] = ()) -> None:
        self._records = sampler.records if isinstance(sampler, LogprobSampler) else None
        self._tokenizer = tokenizer
        self._skip = frozenset(skip_ids)  # end-of-text tokens: never shown, so not listed
        self._used = 0

    def attach(self, delta: TokenDelta) -> TokenDelta:
        if self._records is None or not delta.token_ids:
            return delta
        records = self._records[self._used:self._used + len(delta.token_ids)]
        self._used += len(records)
        entries = tuple(_entry(self._tokenizer, token, logprob, top) for token, logprob, top in records
                        if token not in self._skip)
        return TokenDelta(text=delta.text, token_ids=delta.token_ids, finish_reason=delta.finish_reason,
                          usage=delta.usage, logprobs=entries)


def from_vllm(token_ids: Sequence[int], logprobs: Sequence[Mapping[int, object]] | None, top: int, tokenizer,
              skip_ids: Iterable[int] = ()) -> tuple[TokenLogprob, ...]:
    """`TokenLogprob`s from vLLM's per-token `{token id: Logprob(logprob, rank, decoded_token)}` maps."""
    if not logprobs:
        return ()
    skip = frozenset(skip_ids)
    out = []
    for token, alternatives in zip(token_ids, logprobs):
        if token in skip:
            continue
        chosen = alternatives.get(token)
        ranked = sorted(((t, lp) for t, lp in alternatives.items() if getattr(lp, "rank", 0) and lp.rank <= top),
                        key=lambda pair: pair[1].rank)
        out.append(_entry(tokenizer, token, float(chosen.logprob) if chosen is not None else float("-inf"),
                          [(t, float(lp.logprob)) for t, lp in ranked]))
    return tuple(out)


def _entry(tokenizer, token: int, logprob: float, top: list[tuple[int, float]]) -> TokenLogprob:
    text, raw = _token(tokenizer, token)
    alternatives = []
    for alternative, alt_logprob in top:
        alt_text, alt_raw = _token(tokenizer, alternative)
        alternatives.append(TopLogprob(token=alt_text, logprob=_finite(alt_logprob), bytes=alt_raw))
    return TokenLogprob(token=text, logprob=_finite(logprob), bytes=raw, top=tuple(alternatives))


def _finite(value: float) -> float:
    # JSON has no -inf; OpenAI reports a token the model gave no chance as -9999.0.
    return value if value > -9999.0 else -9999.0


def _token(tokenizer, token: int) -> tuple[str, bytes]:
    """A token's text and exact bytes."""
    piece = tokenizer.convert_ids_to_tokens(token) if hasattr(tokenizer, "convert_ids_to_tokens") else None
    decoder = _byte_decoder()
    if isinstance(piece, str) and piece and all(ch in decoder for ch in piece):
        raw = bytes(decoder[ch] for ch in piece)  # byte-level BPE: each symbol is one byte
    else:
        raw = tokenizer.decode([token]).encode("utf-8")
    return raw.decode("utf-8", "replace"), raw


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (`bytes_to_unicode`), reversed: symbol -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, codes)}

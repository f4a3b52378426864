"""Per-request logits processing and sampling, for a batch whose rows each have their own parameters.

The batch scheduler hands each row of a step's logits to that sequence's `TokenSampler`, which applies
the request's penalties, temperature, top-k and top-p and draws from the request's own
`torch.Generator`. Never torch's process-wide RNG: sequences sharing a batch would consume each
other's random numbers and no seed could be repeatable. A seeded request is therefore repeatable
whatever else runs beside it, with no global lock.

The order of the steps follows HF `generate` (which the engine used before): repetition penalty,
then OpenAI's presence and frequency penalties, then temperature, top-k and top-p. Sampling runs on
the CPU whatever the model's device: a row of logits is a few hundred kilobytes, and a seed then means
the same thing on every device.

A guided request (structured output, a forced tool call) brings an xgrammar `GrammarMatcher`
(`engines/guided.py`): after the penalties, every token the grammar does not allow next is masked
out, and each picked token advances the matcher. The matcher lives with the sampler, so a preempted
sequence resumes in the grammar exactly where it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cynode.engines.base import SamplingParams


class TokenSampler:
    """Picks one sequence's next tokens; keeps what its penalties need (the tokens seen so far)."""

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int], matcher=None) -> None:
        self.params = params = params.resolved()
        self.matcher = matcher  # an xgrammar GrammarMatcher, for a guided request
        self._bitmask = None
        self._repetition = params.repetition_penalty != 1.0
        self._presence_frequency = bool(params.presence_penalty or params.frequency_penalty)
        # HF's repetition penalty looks at the prompt too; OpenAI's penalties at the answer only (as vLLM).
        self._seen: set[int] = set(prompt_ids) if self._repetition else set()
        self._counts: dict[int, int] = {}
        self.generator: torch.Generator | None = None
        if not params.greedy:
            self.generator = torch.Generator()
            if params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(params.seed)

    @property
    def plain_greedy(self) -> bool:
        """True when the pick is the raw logits' argmax, which the scheduler takes for all rows at once."""
        return self.params.greedy and not (self._repetition or self._presence_frequency or self.matcher)

    def pick(self, logits: torch.Tensor) -> int:
        """The next token from one row of logits (shape [vocab]); remembers it for the penalties."""
        scores = self.process(logits.detach().to("cpu", torch.float32))
        if self.params.greedy:
            token = int(scores.argmax())
        else:
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        self.observe(token)
        return token

    def observe(self, token: int) -> None:
        if self._repetition:
            self._seen.add(token)
        if self._presence_frequency:
            self._counts[token] = self._counts.get(token, 0) + 1
        if self.matcher is not None and not self.matcher.is_terminated():
            self.matcher.accept_token(token)

    def process(self, scores: torch.Tensor) -> torch.Tensor:
        """Penalties, then (when sampling) temperature, top-k and top-p; returns new scores."""
        p = self.params
        if self._repetition and self._seen:
            ids = torch.tensor(sorted(self._seen), dtype=torch.long)
            picked = scores[ids]
            scores = scores.clone()
            scores[ids] = torch.where(picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty)
        if self._presence_frequency and self._counts:
            ids = torch.tensor(list(self._counts), dtype=torch.long)
            counts = torch.tensor(list(self._counts.values()), dtype=scores.dtype)
            scores = scores.clone()
            scores[ids] -= p.frequency_penalty * counts + p.presence_penalty
        if self.matcher is not None:
            scores = self._mask(scores)
        if p.greedy:
            return scores
        scores = scores / p.temperature
        if 0 < p.top_k < scores.shape[-1]:
            kth = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=False)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= (1 - p.top_p)
            drop[-1] = False  # keep at least the most likely token
            scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
        return scores

    def _mask(self, scores: torch.Tensor) -> torch.Tensor:
        """`scores` with every token the grammar does not allow next at -inf."""
        import xgrammar as xgr  # only guided requests need it

        if self._bitmask is None:
            self._bitmask = xgr.allocate_token_bitmask(1, scores.shape[-1])
        self.matcher.fill_next_token_bitmask(self._bitmask)
        masked = scores.clone().unsqueeze(0)
        xgr.apply_token_bitmask_inplace(masked, self._bitmask)
        masked = masked.squeeze(0)
        if not torch.isfinite(masked).any():
            # The grammar allows nothing more (a schema no text satisfies): end the answer here
            # rather than sample from nothing.
            stop = torch.tensor(list(self.matcher.stop_token_ids) or [int(scores.argmax())], dtype=torch.long)
            masked[stop] = scores[stop]
        return masked

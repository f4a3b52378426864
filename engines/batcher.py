"""Continuous batching: one thread owns the model and decodes every admitted sequence in one forward.

Between two decode steps the thread drops the sequences that finished or were cancelled and admits
waiting ones, first come first served, up to `max_batch`. A new sequence is prefilled alone (exactly
the forward it would get as the only request), its first token is sampled and streamed at once, and
its K/V joins the `RaggedKVCache`. Each decode step is then one forward for all rows: one token per
row, each at its own position, with a mask that shows each row only its own tokens. So N streams cost
one step per token, not N, and a sequence's greedy output in a batch equals its output alone.

Only this thread touches the model. Other threads talk to it through `submit` and `cancel` (under one
lock) and hear back through each sequence's `sink`, which must not block: the engine's sink is
`loop.call_soon_threadsafe`. A cancelled sequence stops counting against the cap at once and leaves
the batch before the next step, so an abort costs at most the step already running.

Prefills are capped per round (`prefill_tokens`), so a burst of new requests cannot stall the
running ones for long; at least one sequence is admitted each round while there is room.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from cynode.engines.batch_cache import RaggedKVCache
from cynode.engines.sampling import TokenSampler

log = logging.getLogger(__name__)

# ("tokens", [ids]) for each new token, then exactly one of ("end", None) or ("error", exception).
# After `cancel`, at most the events of the step already running.
Sink = Callable[[str, object], None]


@dataclass(eq=False)
class Sequence:
    """One request inside the scheduler."""

    request_id: str
    prompt_ids: list[int]
    max_new: int  # the scheduler ends the sequence after this many tokens
    sampler: TokenSampler
    sink: Sink
    generated: list[int] = field(default_factory=list)
    # Set from any thread, read by the scheduler between steps: a plain flag is enough under the GIL.
    cancelled: bool = False


class ContinuousBatcher:
    """The scheduler thread of one model. `start` it, `submit` sequences, `close` it."""

    def __init__(self, model, *, eos_ids: Iterable[int], max_batch: int, device: torch.device | str = "cpu",
                 name: str = "model", prefill_tokens: int = 2048) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.model = model
        self.eos_ids = frozenset(eos_ids)
        self.max_batch = max_batch
        self.device = torch.device(device)
        self.name = name
        self.prefill_tokens = prefill_tokens
        self._cond = threading.Condition()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._admitted: list[Sequence] = []  # prefilling or running; the thread adds and removes
        self._running: list[Sequence] = []  # row i of the cache is _running[i]; thread only
        self._cache = self._new_cache()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and metrics)
        self.largest_batch = 0  # the most rows one decode step ever held

    # any thread ----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"batch-{self.name}", daemon=True)
            self._thread.start()

    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("the scheduler is closed")
            self._waiting.append(seq)
            self._cond.notify()

    def cancel(self, seq: Sequence) -> None:
        """Stop `seq` (no more events reach its sink); unknown or finished sequences are ignored."""
        with self._cond:
            seq.cancelled = True
            try:
                self._waiting.remove(seq)
            except ValueError:
                pass
            self._cond.notify()

    @property
    def active(self) -> int:
        """Sequences holding a place in the batch (cancelled ones no longer count)."""
        with self._cond:
            return sum(not s.cancelled for s in self._admitted)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel everything and stop the thread (it finishes the step it is in). Safe to call twice."""
        with self._cond:
            self._closing = True
            for seq in (*self._waiting, *self._admitted):
                seq.cancelled = True
            self._waiting.clear()
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # the scheduler thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while (admitted := self._next_round()) is not None:
                    for seq in admitted:
                        self._prefill(seq)
                    if self._running:
                        self._decode_step()
        except BaseException as exc:  # a bug here must not leave streams waiting forever
            log.exception("the batch scheduler of %s crashed", self.name)
            self._fail_all(exc)
            raise
        finally:
            self._running, self._cache = [], self._new_cache()

    def _next_round(self) -> list[Sequence] | None:
        """Drop cancelled rows, then take waiting sequences that fit; None when closing."""
        with self._cond:
            while not (self._closing or self._waiting or self._running):
                self._cond.wait()
            if self._closing:
                self._admitted.clear()
                return None
        for row in reversed(range(len(self._running))):
            if self._running[row].cancelled:
                self._leave(row)
        admitted: list[Sequence] = []
        budget = self.prefill_tokens
        with self._cond:
            while self._waiting and len(self._running) + len(admitted) < self.max_batch:
                if admitted and len(self._waiting[0].prompt_ids) > budget:
                    break
                seq = self._waiting.popleft()
                budget -= len(seq.prompt_ids)
                admitted.append(seq)
                self._admitted.append(seq)
        return admitted

    def _prefill(self, seq: Sequence) -> None:
        if seq.cancelled:
            self._forget(seq)
            return
        try:
            cache = DynamicCache()
            ids = torch.tensor([seq.prompt_ids], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = seq.sampler.pick(out.logits[0, -1])
            if not self._emit(seq, token):
                self._cache.add([(layer.keys, layer.values) for layer in cache.layers])
                self._running.append(seq)
        except Exception as exc:  # this request fails; the batch goes on
            log.exception("prefill of request %s failed", seq.request_id)
            self._forget(seq)
            seq.sink("error", exc)

    def _decode_step(self) -> None:
        rows = self._running
        try:
            mask, positions = self._cache.step_inputs()
            ids = torch.tensor([[s.generated[-1]] for s in rows], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                             past_key_values=self._cache, use_cache=True)
            self._cache.advance()
        except Exception as exc:
            log.exception("decode step of %s failed with %d sequences", self.name, len(rows))
            self._fail_all(exc)
            return
        self.steps += 1
        self.largest_batch = max(self.largest_batch, len(rows))
        logits = out.logits[:, -1, :]
        greedy = logits.argmax(dim=-1).tolist() if any(s.sampler.plain_greedy for s in rows) else None
        done = []
        for row, seq in enumerate(rows):
            if seq.cancelled:
                continue  # dropped before the next step
            if seq.sampler.plain_greedy:
                token = greedy[row]
                seq.sampler.observe(token)
            else:
                token = seq.sampler.pick(logits[row])
            if self._emit(seq, token):
                done.append(row)
        for row in reversed(done):
            self._leave(row)

    def _emit(self, seq: Sequence, token: int) -> bool:
        """Stream one token; True when it ended the sequence (which then has left the batch's count)."""
        seq.generated.append(token)
        if seq.cancelled:
            return False
        seq.sink("tokens", [token])
        if token in self.eos_ids or len(seq.generated) >= seq.max_new:
            self._forget(seq)  # before "end": a consumer seeing the end sees the slot free
            seq.sink("end", None)
            return True
        return False

    def _leave(self, row: int) -> None:
        """Remove a running row, mirroring the cache's move of the last row into it."""
        self._cache.remove(row)
        seq = self._running[row]
        self._running[row] = self._running[-1]
        self._running.pop()
        self._forget(seq)

    def _forget(self, seq: Sequence) -> None:
        with self._cond:
            if seq in self._admitted:
                self._admitted.remove(seq)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            failed = [s for s in self._admitted if not s.cancelled]
            self._admitted.clear()
        self._running, self._cache = [], self._new_cache()
        for seq in failed:
            seq.sink("error", exc)

    def _new_cache(self) -> RaggedKVCache:
        config = self.model.config.get_text_config(decoder=True)
        return RaggedKVCache(config.num_hidden_layers, self.max_batch, self.device)

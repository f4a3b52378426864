"""Continuous batching: one thread owns the model and decodes every admitted sequence in one forward.

A round of the thread: drop the sequences that finished or were cancelled; admit waiting ones, first
come first served, while the batch has a place (`max_batch`) and the KV cap (`kv_tokens`) has room;
spend at most `prefill_tokens` prompt tokens on prefills; then one decode step for every running row.

Prefill is chunked: a prompt longer than the round's budget is prefilled over several rounds, into a
cache of its own, and the running streams get a decode step between every two chunks, so a long new
prompt costs them about one chunk per token instead of its whole prefill. Prompts that arrive
together and fit one round's budget are prefilled in one forward, packed end to end with a mask that
keeps each to its own tokens (`_prefill_packed`), so N new streams cost one prefill, not N. When
the last chunk is in, the first token is sampled and streamed, and the K/V joins the `RaggedKVCache`. Each decode step is one forward for all rows: one token per row, each
at its own position, with a mask that shows each row only its own tokens. So N streams cost one step
per token, not N, and a sequence's greedy output in a batch equals its output alone.

The KV cap counts what the ragged cache really holds, rows × (longest row + 1) tokens (rows are
padded to the longest), plus the prompts being prefilled. Before a decode step that would exceed it,
the most recently admitted running sequence is preempted: its row is freed and it goes back to the
front of the queue with the tokens it generated; when there is room again its prompt and those
tokens are prefilled again (recomputation, as vLLM does) and it goes on from where it was, with its
own sampler and generator untouched, so its output does not change. A lone sequence is never
preempted (the engine sizes the cap to hold at least one sequence of the whole context).

Only this thread touches the model. Other threads talk to it through `submit` and `cancel` (under one
lock) and hear back through each sequence's `sink`, which must not block: the engine's sink is
`loop.call_soon_threadsafe`. A cancelled sequence stops counting against the cap at once and leaves
the batch before the next step, so an abort costs at most the step already running.

LoRA adapters: each sequence may name one (`Sequence.adapter`); when the model is a PEFT model the
forward gets `adapter_names`, one per row ("__base__" for none), so rows of different adapters and of
the base model share one decode step (PEFT applies each adapter to its own rows only). Prompts are
packed into one prefill forward only with prompts of the same adapter (a packed forward is one row).
Adapters are added and removed by jobs (`run_in_thread`) that the thread runs between two rounds,
never during a forward.

`trace`, when set to a list, receives ("prefill", request_id, tokens), ("prefill-packed",
[request_ids], tokens) before the "prefill" of each prompt it packed, ("decode", rows) and
("preempt", request_id) in the order the thread ran them (tests count interleaving with it).
"""

from __future__ import annotations

import collections
import concurrent.futures
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
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass(eq=False)
class Sequence:
    """One request inside the scheduler."""

    request_id: str
    prompt_ids: list[int]
    max_new: int  # the scheduler ends the sequence after this many tokens
    sampler: TokenSampler
    sink: Sink
    adapter: str | None = None  # the LoRA adapter this sequence runs with (None: the base model)
    generated: list[int] = field(default_factory=list)
    # Set from any thread, read by the scheduler between steps: a plain flag is enough under the GIL.
    cancelled: bool = False
    # The scheduler thread's own: the prefill in progress (ids to run, how many ran, their cache).
    feed: list[int] = field(default_factory=list, repr=False)
    fed: int = 0
    kv: DynamicCache | None = field(default=None, repr=False)
    admitted_at: int = 0  # admission order: the newest running sequence is preempted first


class ContinuousBatcher:
    """The scheduler thread of one model. `start` it, `submit` sequences, `close` it."""

    def __init__(self, model, *, eos_ids: Iterable[int], max_batch: int, device: torch.device | str = "cpu",
                 name: str = "model", prefill_tokens: int = 256, kv_tokens: int | None = None) -> None:
        if max_batch < 1 or prefill_tokens < 1 or (kv_tokens is not None and kv_tokens < 1):
            raise ValueError("need max_batch >= 1, prefill_tokens >= 1 and kv_tokens >= 1 (or None)")
        self.model = model
        self.eos_ids = frozenset(eos_ids)
        self.max_batch = max_batch
        self.device = torch.device(device)
        self.name = name
        self.prefill_tokens = prefill_tokens  # prompt tokens prefilled per round (one chunk)
        self.kv_tokens = kv_tokens  # cap on cached tokens (padded); None: no cap
        self._cond = threading.Condition()
        self._jobs: collections.deque[tuple[Callable[[], object], concurrent.futures.Future]] = collections.deque()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._admitted: list[Sequence] = []  # prefilling or running; the thread adds and removes
        self._prefilling: list[Sequence] = []  # admitted, prompt not fully in yet; thread only
        self._running: list[Sequence] = []  # row i of the cache is _running[i]; thread only
        self._cache = self._new_cache()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._admissions = 0
        self.steps = 0  # decode steps run (for tests and metrics)
        self.largest_batch = 0  # the most rows one decode step ever held
        self.preemptions = 0  # sequences preempted to keep the cache under kv_tokens
        self.packed_prefills = 0  # forwards that prefilled several whole prompts at once
        self.trace: list | None = None

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

    def run_in_thread(self, job: Callable[[], object]) -> concurrent.futures.Future:
        """Run `job` on the scheduler thread between two rounds (it may change `self.model`, e.g.
        add an adapter); the future holds its result or its exception."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closing:
                raise RuntimeError("the scheduler is closed")
            self._jobs.append((job, future))
            self._cond.notify()
        return future

    def cancel(self, seq: Sequence) -> None:
        """Stop `seq` (no more events reach its sink); unknown or finished sequences are ignored."""
        with self._cond:
            seq.cancelled = True
            try:
                self._waiting.remove(seq)
            except ValueError:
                pass
            self._cond.notify()

    def resize(self, max_batch: int, kv_tokens: int | None) -> None:
        """New limits from the next round on: more places and room admit more at once; less room
        preempts the newest running sequences before the next decode step (nobody is dropped)."""
        if max_batch < 1 or (kv_tokens is not None and kv_tokens < 1):
            raise ValueError("need max_batch >= 1 and kv_tokens >= 1 (or None)")
        with self._cond:
            self.max_batch, self.kv_tokens = max_batch, kv_tokens
            self._cache.max_rows, self._cache.max_tokens = max(max_batch, self._cache.rows), kv_tokens
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
            jobs, self._jobs = list(self._jobs), collections.deque()
            self._cond.notify()
        for _, future in jobs:
            future.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # the scheduler thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while self._next_round():
                    if self._prefilling:
                        self._prefill_round()
                    if self._running:
                        self._make_room()
                        self._decode_step()
        except BaseException as exc:  # a bug here must not leave streams waiting forever
            log.exception("the batch scheduler of %s crashed", self.name)
            self._fail_all(exc)
            raise
        finally:
            self._running, self._prefilling, self._cache = [], [], self._new_cache()

    def _next_round(self) -> bool:
        """Drop cancelled sequences, then admit waiting ones that fit; False when closing."""
        with self._cond:
            while not (self._closing or self._jobs or self._waiting or self._running or self._prefilling):
                self._cond.wait()
            if self._closing:
                self._admitted.clear()
                return False
            jobs, self._jobs = list(self._jobs), collections.deque()
        for job, future in jobs:
            if future.set_running_or_notify_cancel():
                try:
                    with torch.inference_mode(False):  # new parameters must be ordinary tensors
                        future.set_result(job())
                except BaseException as exc:  # the job's caller hears of it; the batch goes on
                    future.set_exception(exc)
        for row in reversed(range(len(self._running))):
            if self._running[row].cancelled:
                self._leave(row)
        for seq in [s for s in self._prefilling if s.cancelled]:
            self._prefilling.remove(seq)
            seq.kv = None
            self._forget(seq)
        with self._cond:
            while self._waiting and len(self._running) + len(self._prefilling) < self.max_batch:
                seq = self._waiting[0]
                feed = seq.prompt_ids + seq.generated  # a preempted sequence brings what it generated
                if (self._running or self._prefilling) and not self._fits(len(feed)):
                    break  # first come first served: the head waits for room, nobody overtakes it
                self._waiting.popleft()
                seq.feed, seq.fed, seq.kv = feed, 0, DynamicCache()
                self._admissions += 1
                seq.admitted_at = self._admissions
                self._admitted.append(seq)
                self._prefilling.append(seq)
        return True

    def _fits(self, new_tokens: int) -> bool:
        """Whether one more sequence of `new_tokens` keeps the batch under the KV cap."""
        if self.kv_tokens is None:
            return True
        rows = len(self._running) + len(self._prefilling) + 1
        longest = max(self._cache.width, new_tokens, *(len(s.feed) for s in self._prefilling))
        return rows * (longest + 1) <= self.kv_tokens

    def _kv_in_use(self) -> int:
        """Tokens the next decode step holds: padded running rows, and the prefills in progress."""
        return len(self._running) * (self._cache.width + 1) + sum(s.fed for s in self._prefilling)

    def _prefill_round(self) -> None:
        """One chunk of prefill work: `prefill_tokens` prompt tokens over the prefills, oldest first.

        Prompts that start and finish within this round (they arrived together and fit the budget)
        are packed into one forward; a prompt continued from an earlier round, or too long to end in
        this one, runs its chunk alone on its own cache.
        """
        budget = self.prefill_tokens
        whole: list[Sequence] = []
        pieces: list[tuple[Sequence, int]] = []
        for seq in list(self._prefilling):
            if budget <= 0:
                break
            if seq.cancelled:
                continue  # dropped at the next round
            left = len(seq.feed) - seq.fed
            n = min(budget, left)
            budget -= n
            if seq.fed == 0 and n == left:
                whole.append(seq)
            else:
                pieces.append((seq, n))
        by_adapter: dict[str | None, list[Sequence]] = {}
        for seq in whole:
            by_adapter.setdefault(seq.adapter, []).append(seq)
        for group in by_adapter.values():
            if len(group) > 1:
                self._prefill_packed(group)
            else:
                pieces.insert(0, (group[0], len(group[0].feed)))
        for seq, n in pieces:
            self._prefill_chunk(seq, n)

    def _prefill_chunk(self, seq: Sequence, n: int) -> None:
        """The next `n` prompt tokens of `seq`, on its own cache; the first token when they were the last."""
        try:
            ids = torch.tensor([seq.feed[seq.fed:seq.fed + n]], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, past_key_values=seq.kv, use_cache=True, logits_to_keep=1,
                             **self._adapter_args([seq]))
            seq.fed += n
            if self.trace is not None:
                self.trace.append(("prefill", seq.request_id, n))
            if seq.fed == len(seq.feed):
                self._prefilled(seq, [(layer.keys, layer.values) for layer in seq.kv.layers], out.logits[0, -1])
        except Exception as exc:  # this request fails; the batch goes on
            self._prefill_failed(seq, exc)

    def _prefill_packed(self, seqs: list[Sequence]) -> None:
        """Whole prompts of several sequences in one forward: packed end to end in one row, each token
        seeing only its own prompt (a block-diagonal causal mask) at its own positions, so each
        sequence's K/V and first token are what a forward of its prompt alone gives.

        Packing instead of padding: no pad token is computed, and no fully masked row can put a NaN
        in the K/V (see batch_cache.py). If the packed forward fails, each prompt is tried alone, so
        only a request that fails by itself fails.
        """
        lengths = [len(seq.feed) for seq in seqs]
        starts = [sum(lengths[:i]) for i in range(len(seqs))]
        try:
            dev = self.device
            ids = torch.tensor([[t for seq in seqs for t in seq.feed]], dtype=torch.long, device=dev)
            positions = torch.cat([torch.arange(n, device=dev) for n in lengths])
            segment = torch.repeat_interleave(torch.arange(len(seqs), device=dev), torch.tensor(lengths, device=dev))
            mask = (segment[:, None] == segment[None, :]) & (positions[:, None] >= positions[None, :])
            last = torch.tensor([a + n - 1 for a, n in zip(starts, lengths)], dtype=torch.long, device=dev)
            kv = DynamicCache()
            out = self.model(input_ids=ids, attention_mask=mask[None, None], position_ids=positions[None],
                             past_key_values=kv, use_cache=True, logits_to_keep=last, **self._adapter_args(seqs[:1]))
        except Exception:
            log.exception("packed prefill of %d prompts failed; prefilling them one at a time", len(seqs))
            for seq in seqs:
                self._prefill_chunk(seq, len(seq.feed))
            return
        self.packed_prefills += 1
        if self.trace is not None:
            self.trace.append(("prefill-packed", [seq.request_id for seq in seqs], sum(lengths)))
        for i, (seq, a, n) in enumerate(zip(seqs, starts, lengths)):
            seq.fed = n
            if self.trace is not None:
                self.trace.append(("prefill", seq.request_id, n))
            try:
                self._prefilled(seq, [(layer.keys[:, :, a:a + n], layer.values[:, :, a:a + n]) for layer in kv.layers],
                                out.logits[0, i])
            except Exception as exc:
                self._prefill_failed(seq, exc)

    def _prefilled(self, seq: Sequence, kv: list[tuple[torch.Tensor, torch.Tensor]], logits: torch.Tensor) -> None:
        """`seq`'s prompt is in: sample its first token and, unless that ended it, give it a row."""
        self._prefilling.remove(seq)
        seq.kv, seq.feed = None, []
        token = seq.sampler.pick(logits)
        if not self._emit(seq, token):
            self._cache.add(kv)
            self._running.append(seq)

    def _prefill_failed(self, seq: Sequence, exc: Exception) -> None:
        log.exception("prefill of request %s failed", seq.request_id, exc_info=exc)
        if seq in self._prefilling:
            self._prefilling.remove(seq)
        seq.kv = None
        self._forget(seq)
        seq.sink("error", exc)

    def _make_room(self) -> None:
        """Preempt the newest running sequences until the next decode step fits the KV cap."""
        if self.kv_tokens is None:
            return
        while len(self._running) > 1 and self._kv_in_use() > self.kv_tokens:
            row = max(range(len(self._running)), key=lambda r: self._running[r].admitted_at)
            seq = self._running[row]
            self._leave(row)
            self.preemptions += 1
            if self.trace is not None:
                self.trace.append(("preempt", seq.request_id))
            with self._cond:
                if not seq.cancelled and not self._closing:
                    self._waiting.appendleft(seq)  # resumes first, by recomputing its tokens

    def _decode_step(self) -> None:
        rows = self._running
        try:
            mask, positions = self._cache.step_inputs()
            ids = torch.tensor([[s.generated[-1]] for s in rows], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                             past_key_values=self._cache, use_cache=True, **self._adapter_args(rows))
            self._cache.advance()
        except Exception as exc:
            log.exception("decode step of %s failed with %d sequences", self.name, len(rows))
            self._fail_all(exc)
            return
        self.steps += 1
        self.largest_batch = max(self.largest_batch, len(rows))
        if self.trace is not None:
            self.trace.append(("decode", [s.request_id for s in rows]))
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

    def _adapter_args(self, rows: list[Sequence]) -> dict:
        """`adapter_names` for a PEFT model (each row's adapter, or the base); nothing for a plain one."""
        if not hasattr(self.model, "peft_config"):
            return {}
        return {"adapter_names": [s.adapter or BASE_ADAPTER for s in rows]}

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
        self._running, self._prefilling, self._cache = [], [], self._new_cache()
        for seq in failed:
            seq.kv = None
            seq.sink("error", exc)

    def _new_cache(self) -> RaggedKVCache:
        config = self.model.config.get_text_config(decoder=True)
        return RaggedKVCache(config.num_hidden_layers, self.max_batch, self.device, max_tokens=self.kv_tokens)

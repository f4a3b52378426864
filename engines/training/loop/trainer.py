"""The training loop: a plain torch loop over a peft model, with events, control and checkpoints.

One optimizer step = `gradient_accumulation_steps` micro-batches; the loss is normalised over the
whole step (trained tokens for supervised, pairs for DPO), so accumulation does not change what is
learnt. Every source of randomness is either derived from (seed, epoch) (data order) or saved in
checkpoints (dropout), so a job resumed from a checkpoint ends with the same adapter as one that
never stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cynode.errors import TrainingError

from .. import events as ev
from ..model.device import peak_memory, rng_state, seed_all, set_rng_state, synchronize
from .batch import epoch_order, input_tokens, micro_batches
from .checkpoint import TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint
from .control import EventSink, TrainerControl
from .methods import Dpo, Supervised
from .schedule import LrSchedule, total_steps
from .watchdog import EarlyStopping, LossWatchdog


@dataclass
class TrainOutcome:
    status: str
    """completed, early_stopping, cancelled or paused."""
    state: TrainerState
    checkpoint: Path | None = None


class Trainer:
    def __init__(self, spec: Any, loaded: Any, data: Any, *, emit: EventSink,
                 control: TrainerControl | None = None) -> None:
        import torch

        self.spec, self.hp = spec, spec.hyperparameters
        self.model, self.device = loaded.model, loaded.device
        self.train_items, self.eval_items = data.train, data.eval
        self.emit = emit
        self.control = control or TrainerControl()
        pad_id = loaded.tokenizer.pad_token_id
        self.method = (Dpo(pad_id, self.device, self.hp.beta) if spec.method == "dpo"
                       else Supervised(pad_id, self.device))
        self.n_micro = len(micro_batches(list(range(len(self.train_items))), self.hp.batch_size))
        self.total_steps = total_steps(self.n_micro, self.hp.gradient_accumulation_steps, self.hp.n_epochs,
                                       self.hp.max_steps)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.hp.learning_rate, weight_decay=self.hp.weight_decay)
        schedule = LrSchedule(self.hp.lr_scheduler, self.hp.warmup_steps, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.state = TrainerState()
        self.watchdog = LossWatchdog(factor=spec.divergence_factor)
        self.stopper = EarlyStopping(spec.early_stopping_patience, spec.early_stopping_min_delta)
        self.best_weights: dict[str, Any] | None = None
        self._step_times: list[float] = []
        self._step_tokens: list[int] = []

    # ---- resume -------------------------------------------------------------------------------

    def resume_if_possible(self) -> Path | None:
        """Restore the latest checkpoint of the output folder (when `spec.resume`); else seed afresh."""
        path = latest_checkpoint(self.spec.output_dir) if self.spec.resume else None
        if path is None:
            seed_all(self.spec.seed + 1)  # the dropout stream starts from the seed, not from model set-up
            return None
        loaded = load_checkpoint(path, self.model)
        self.optimizer.load_state_dict(loaded.optimizer)
        self.scheduler.load_state_dict(loaded.scheduler)
        set_rng_state(loaded.rng, self.device)
        self.state = loaded.state
        self.watchdog = LossWatchdog(**{**self.watchdog.state(), **loaded.state.watchdog,
                                        "factor": self.spec.divergence_factor})
        self.stopper = EarlyStopping(**{**self.stopper.state(), **loaded.state.early_stopping,
                                        "patience": self.spec.early_stopping_patience,
                                        "min_delta": self.spec.early_stopping_min_delta})
        self.best_weights = loaded.best_weights
        self.emit(ev.Resumed(job_id=self.spec.job_id, step=self.state.step, epoch=self.state.epoch,
                             tokens=self.state.tokens, checkpoint=str(path)))
        return path

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> TrainOutcome:
        st = self.state
        accumulation = self.hp.gradient_accumulation_steps
        while st.step < self.total_steps:
            batches = micro_batches(epoch_order(len(self.train_items), self.spec.seed, st.epoch), self.hp.batch_size)
            while st.batch_in_epoch < len(batches) and st.step < self.total_steps:
                group = batches[st.batch_in_epoch: st.batch_in_epoch + accumulation]
                if not self._train_step(group):
                    return TrainOutcome("cancelled", st)
                st.batch_in_epoch += len(group)
                epoch_end = st.batch_in_epoch >= len(batches)
                if epoch_end:  # the next epoch walks its own order: leave this one's batches
                    st.epoch += 1
                    st.batch_in_epoch = 0
                outcome = self._after_step(epoch_end)
                if outcome is not None:
                    return outcome
                if epoch_end:
                    break
        return TrainOutcome("completed", st)

    def _train_step(self, group: list[list[int]]) -> bool:
        """One optimizer step over the micro-batches in `group`; False when cancelled mid-step."""
        import torch

        st = self.state
        started = time.perf_counter()
        items = [[self.train_items[i] for i in mb] for mb in group]
        batches = [self.method.collate(mb) for mb in items]
        denominator = self.method.denominator(batches)
        loss_value = 0.0
        sums: dict[str, float] = {}
        for batch in batches:
            if self.control.cancel_requested:
                self.optimizer.zero_grad(set_to_none=True)
                return False
            loss, figures = self.method.micro_step(self.model, batch, denominator)
            loss.backward()
            loss_value += float(loss.detach())
            for k, v in figures.items():
                sums[k] = sums.get(k, 0.0) + v
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.hp.max_grad_norm))
        reason = self.watchdog.check(loss_value, grad_norm)
        if reason is not None:  # the adapter never takes a NaN step; the last checkpoint stays good
            raise TrainingError(f"stopped at step {st.step + 1}: {reason}", code="diverged")
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        seconds = time.perf_counter() - started
        step_tokens = sum(input_tokens(mb) for mb in items)
        st.step += 1
        st.tokens += step_tokens
        st.loss_tokens += int(denominator) if self.method.name == "supervised" else 0
        st.train_seconds += seconds
        st.last_loss = loss_value
        self._step_times.append(seconds)
        self._step_tokens.append(step_tokens)
        reason = self.watchdog.observe(loss_value)
        if reason is not None:
            raise TrainingError(f"stopped at step {st.step}: {reason}", code="diverged")
        self.emit(ev.Step(
            job_id=self.spec.job_id, step=st.step, total_steps=self.total_steps,
            epoch=round(st.epoch + (st.batch_in_epoch + len(group)) / max(1, self.n_micro), 4),
            loss=loss_value, learning_rate=lr, grad_norm=grad_norm, tokens=st.tokens, step_tokens=step_tokens,
            step_seconds=seconds, tokens_per_second=self._throughput(), eta_seconds=self._eta(),
            memory_bytes=peak_memory(self.device),
            metrics={k: v / denominator for k, v in sums.items()},
        ))
        return True

    def _after_step(self, epoch_end: bool) -> TrainOutcome | None:
        st = self.state
        every = self.spec.eval_every
        if self.eval_items and ((every and st.step % every == 0) or epoch_end or st.step == self.total_steps):
            if st.last_eval_step != st.step and self._evaluate():
                self._restore_best()
                return TrainOutcome("early_stopping", st)
        if self.control.cancel_requested:
            return TrainOutcome("cancelled", st)
        if self.control.pause_requested:
            return TrainOutcome("paused", st, self._checkpoint("pause"))
        if self.control.take_checkpoint_request():
            self._checkpoint("requested")
        elif self.spec.checkpoint_every and st.step % self.spec.checkpoint_every == 0 and st.step < self.total_steps:
            self._checkpoint("interval")
        return None

    # ---- evaluation and checkpoints ------------------------------------------------------------

    def _evaluate(self) -> bool:
        """Evaluate and report; True when early stopping says stop."""
        st = self.state
        self.model.eval()
        try:
            loss, figures = self.method.evaluate(self.model, self.eval_items, self.hp.batch_size)
        finally:
            self.model.train()
        improved, stop = self.stopper.update(loss)
        if improved and self.spec.early_stopping_patience:
            self.best_weights = self._adapter_weights()
        st.last_eval_loss, st.last_eval_step = loss, st.step
        st.early_stopping = self.stopper.state()
        self.emit(ev.Evaluation(job_id=self.spec.job_id, step=st.step, eval_loss=loss,
                                best_eval_loss=self.stopper.best if self.stopper.best is not None else loss,
                                improved=improved, metrics=figures))
        return stop

    def _adapter_weights(self) -> dict[str, Any]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().to("cpu").clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def _restore_best(self) -> None:
        """Early stopping ends with the adapter of the best evaluation, not the last one."""
        if self.best_weights is not None:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, self.best_weights)
            self.state.last_eval_loss = self.stopper.best

    def _checkpoint(self, reason: str) -> Path:
        st = self.state
        st.watchdog = self.watchdog.state()
        st.early_stopping = self.stopper.state()
        path = save_checkpoint(
            self.spec.output_dir, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, state=st,
            rng=rng_state(self.device), base_model_id=self.spec.base_model_id, best_weights=self.best_weights,
            keep=self.spec.keep_checkpoints,
        )
        self.emit(ev.CheckpointSaved(job_id=self.spec.job_id, step=st.step, path=str(path), reason=reason))
        return path

    # ---- figures -----------------------------------------------------------------------------

    def _throughput(self) -> float:
        """Tokens per second over this run's steps, the first (warm-up) step left out once there are more."""
        times, tokens = self._step_times, self._step_tokens
        if len(times) > 1:
            times, tokens = times[1:], tokens[1:]
        seconds = sum(times)
        return sum(tokens) / seconds if seconds > 0 else 0.0

    def _eta(self) -> float:
        times = self._step_times[1:] or self._step_times
        return (self.total_steps - self.state.step) * (sum(times) / len(times))

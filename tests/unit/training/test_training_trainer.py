"""The trainer on a tiny random-weight llama, in-process: resume, control, stopping rules, DPO, events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cynode.engines.training import (
    JobSpec, TrainerControl, event_from_dict, list_checkpoints, run_job,
)
from cynode.engines.training.loop import EarlyStopping, LossWatchdog
from cynode.errors import TrainingError
from training_testkit import job, write_jsonl


def adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def run(spec: dict, control: TrainerControl | None = None, on_event=None):
    events = []

    def emit(event):
        events.append(event)
        if on_event:
            on_event(event)

    terminal = run_job(JobSpec.from_dict(spec), emit, control)
    assert events[-1] is terminal and sum(e.terminal for e in events) == 1
    return terminal, events


def of(events, kind):
    return [e for e in events if e.type == kind]


def test_a_paused_and_resumed_job_ends_with_the_same_adapter_as_an_unbroken_one(tiny_model_dir, secret_file, tmp_path):
    import torch

    shape = dict(hyperparameters={"n_epochs": 3, "gradient_accumulation_steps": 2, "batch_size": 2},
                 lora={"dropout": 0.2})  # dropout: the resumed run must restore the RNG to match
    unbroken, u_events = run(job(tiny_model_dir, secret_file, tmp_path / "u", **shape))
    assert unbroken.type == "finished" and unbroken.step == 9  # 12 rows / 2 per micro-batch / 2 per step x 3

    control = TrainerControl()
    paused, p_events = run(job(tiny_model_dir, secret_file, tmp_path / "p", **shape), control,
                           lambda e: e.type == "step" and e.step == 4 and control.request_pause())
    assert paused.type == "paused" and paused.step == 4
    assert not (tmp_path / "p" / "adapter").exists()
    resumed, r_events = run(job(tiny_model_dir, secret_file, tmp_path / "p", **shape))
    (info,) = of(r_events, "resumed")
    assert (info.step, info.epoch, info.tokens) == (4, 1, of(p_events, "step")[-1].tokens)
    assert [e.step for e in of(r_events, "step")] == [5, 6, 7, 8, 9]
    assert resumed.type == "finished" and resumed.step == 9 and resumed.tokens == unbroken.tokens
    assert [e.loss for e in of(r_events, "step")] == pytest.approx([e.loss for e in of(u_events, "step")][4:], rel=1e-5)
    a, b = adapter_weights(tmp_path / "u"), adapter_weights(tmp_path / "p")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_the_loss_falls_and_events_round_trip_through_json(tiny_model_dir, secret_file, tmp_path):
    terminal, events = run(job(tiny_model_dir, secret_file, tmp_path / "o", validation_split=0.25,
                               hyperparameters={"n_epochs": 4, "packing": True, "max_seq_len": 128,
                                                "learning_rate": 3e-2}))
    assert terminal.type == "finished"
    types = [e.type for e in events]
    assert types[:2] == ["dataset_prepared", "model_loaded"] and "evaluation" in types
    prepared = events[0]
    assert (prepared.train_samples, prepared.eval_samples) == (9, 3) and prepared.sequences < 9  # packed
    steps = of(events, "step")
    assert steps[-1].loss < steps[0].loss - 0.1  # a random 2-layer model learns slowly; SmolLM2 tests learn for real
    for step in steps:
        assert step.tokens_per_second > 0 and step.memory_bytes > 0 and step.grad_norm > 0
        assert 0 < step.learning_rate <= 3e-2 and step.eta_seconds >= 0
    assert steps[-1].eta_seconds == 0 and steps[-1].epoch == pytest.approx(4.0)
    for event in events:
        again = event_from_dict(json.loads(json.dumps(event.to_dict())))
        assert again == event


def test_checkpoint_now_and_interval_checkpoints_keep_the_latest(tiny_model_dir, secret_file, tmp_path):
    control = TrainerControl()
    terminal, events = run(job(tiny_model_dir, secret_file, tmp_path / "o", checkpoint_every=2, keep_checkpoints=2,
                               hyperparameters={"n_epochs": 2}), control,
                           lambda e: e.type == "step" and e.step == 3 and control.request_checkpoint())
    saved = [(e.step, e.reason) for e in of(events, "checkpoint_saved")]
    assert saved == [(2, "interval"), (3, "requested"), (4, "interval"), (6, "interval"), (8, "interval"),
                     (10, "interval")]
    assert [s for s, _ in list_checkpoints(tmp_path / "o")] == [8, 10]
    assert terminal.type == "finished"


def test_cancel_stops_without_an_adapter(tiny_model_dir, secret_file, tmp_path):
    control = TrainerControl()
    terminal, events = run(job(tiny_model_dir, secret_file, tmp_path / "o"), control,
                           lambda e: e.type == "step" and e.step == 2 and control.request_cancel())
    assert terminal.type == "cancelled" and terminal.step == 2
    assert not (tmp_path / "o" / "adapter").exists()


class LossFrom:
    """Test double around a real training method: from micro-batch `at` on, `change` alters its loss."""

    def __init__(self, inner, at: int, change) -> None:
        self.inner, self.at, self.change, self.calls = inner, at, change, 0
        self.name = inner.name

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def micro_step(self, model, batch, denominator):
        loss, figures = self.inner.micro_step(model, batch, denominator)
        self.calls += 1
        return (self.change(loss) if self.calls >= self.at else loss), figures


def trainer_for(spec: dict, events: list):
    from cynode.engines.training.data import prepare_dataset
    from cynode.engines.training.loop import Trainer
    from cynode.engines.training.model import load_tokenizer, setup_model

    job_spec = JobSpec.from_dict(spec)
    tokenizer = load_tokenizer(job_spec.model_dir)
    return Trainer(job_spec, setup_model(job_spec, tokenizer), prepare_dataset(job_spec, tokenizer), emit=events.append)


@pytest.mark.parametrize("change, words", [
    (lambda loss: loss * float("nan"), "not a finite number"),
    (lambda loss: loss * 50, "the loss diverged"),
])
def test_a_nan_or_diverging_loss_stops_training_with_a_clear_reason(tiny_model_dir, secret_file, tmp_path, change, words):
    import torch

    events: list = []
    trainer = trainer_for(job(tiny_model_dir, secret_file, tmp_path / "o", hyperparameters={"n_epochs": 4}), events)
    trainer.method = LossFrom(trainer.method, 7, change)
    trainer.resume_if_possible()
    with pytest.raises(TrainingError) as info:
        trainer.run()
    assert info.value.code == "diverged" and words in info.value.message
    assert "step 7" in info.value.message
    assert [e.step for e in of(events, "step")] == list(range(1, 7))  # step 7 was never applied
    assert all(torch.isfinite(p).all() for p in trainer.params)


def test_an_unknown_architecture_fails_the_job_after_the_data_is_checked(secret_file, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, GPT2Config

    folder = tmp_path / "gpt2"
    AutoModelForCausalLM.from_config(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)
                                     ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    terminal, events = run(job(folder, secret_file, tmp_path / "o"))
    assert [e.type for e in events] == ["dataset_prepared", "failed"]
    assert terminal.code == "unknown_architecture" and "'gpt2'" in terminal.message


def test_early_stopping_keeps_the_best_evaluation(tiny_model_dir, secret_file, tmp_path):
    import torch

    # min_delta is huge, so only the first evaluation counts as an improvement: patience 1 stops at the second.
    terminal, events = run(job(tiny_model_dir, secret_file, tmp_path / "e", validation_files=[str(secret_file)],
                               eval_every=2, early_stopping_patience=1, early_stopping_min_delta=100.0,
                               hyperparameters={"n_epochs": 5, "lr_scheduler": "constant"}))
    assert terminal.type == "finished" and terminal.stop_reason == "early_stopping" and terminal.step == 4
    evals = of(events, "evaluation")
    assert [e.improved for e in evals] == [True, False]
    assert terminal.eval_loss == pytest.approx(evals[0].eval_loss)
    reference, _ = run(job(tiny_model_dir, secret_file, tmp_path / "r",
                           hyperparameters={"n_epochs": 5, "max_steps": 2, "lr_scheduler": "constant"}))
    a, b = adapter_weights(tmp_path / "e"), adapter_weights(tmp_path / "r")
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_dpo_runs_on_pairs_and_moves_the_margin(tiny_model_dir, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": [{"role": "user", "content": f"Is {n} even?"}], "chosen": "Yes, it is even.",
         "rejected": "No idea."} for n in range(0, 16, 2)])
    terminal, events = run(job(tiny_model_dir, pairs, tmp_path / "o", method="dpo", validation_files=[str(pairs)],
                               hyperparameters={"n_epochs": 3, "learning_rate": 5e-3, "beta": 0.5}))
    assert terminal.type == "finished"
    steps = of(events, "step")
    assert steps[0].metrics["rewards_margin"] == pytest.approx(0.0, abs=1e-5)  # the adapter starts as a no-op
    final = of(events, "evaluation")[-1]
    assert final.metrics["rewards_margin"] > 0.5 and final.metrics["rewards_accuracy"] == 1.0
    assert final.eval_loss < 0.69  # below log(2), DPO's loss at a zero margin


def test_a_bad_row_fails_the_job_before_any_model_is_loaded(tiny_model_dir, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"text": 3}])
    terminal, events = run(job(tiny_model_dir, bad, tmp_path / "o"))
    assert [e.type for e in events] == ["failed"]
    assert terminal.code == "invalid_training_file"
    assert terminal.error["row"] == 2 and terminal.error["field"] == "text" and terminal.error["file"] == str(bad)


@pytest.mark.parametrize("change, words", [
    ({"lora": {"r": 12}}, "lora.r: 12 is not a vLLM rank"),
    ({"lora": {"r": 32}}, "above the serving max_lora_rank 16"),
    ({"lora": {"use_dora": True}}, "vLLM cannot serve DoRA"),
    ({"serving": {"max_lora_rank": 48}}, "serving.max_lora_rank: 48"),
    ({"format": "preference"}, "trains with method dpo"),
    ({"hyperparameters": {"learning_rate": 0}}, "hyperparameters.learning_rate"),
    ({"surprise": 1}, "surprise"),
    ({"early_stopping_patience": 2}, "needs validation_files"),
])
def test_a_bad_spec_names_the_field(tmp_path, change, words):
    spec = {"job_id": "j", "model_dir": "/m", "train_files": ["/t.jsonl"], "output_dir": str(tmp_path), **change}
    with pytest.raises(TrainingError) as info:
        JobSpec.from_dict(spec)
    assert info.value.code == "invalid_job" and words in info.value.message


def test_the_watchdog_and_early_stopping_rules_on_numbers():
    dog = LossWatchdog(factor=3.0, window=3, smoothing=0.5)
    assert dog.check(float("nan"), 1.0) and dog.check(1.0, float("inf")) and dog.check(2.0, 1.0) is None
    for loss in (2.0, 2.0, 2.0, 2.5, 3.0, 5.0):  # the smoothed loss reaches 3.81: under 3 x 2
        assert dog.observe(loss) is None
    assert "diverged" in dog.observe(30.0)  # smoothed 16.9
    stop = EarlyStopping(patience=2, min_delta=0.1)
    assert stop.update(1.0) == (True, False)
    assert stop.update(0.95) == (False, False)  # not better by more than min_delta
    assert stop.update(0.5) == (True, False)
    assert stop.update(0.6) == (False, False)
    assert stop.update(0.7) == (False, True)

"""End to end on the real SmolLM2-135M-Instruct (CPU, fp32): supervised LoRA teaches an unseen fact
through the child-process runner, and DPO moves the chosen/rejected margin."""

from __future__ import annotations

import pytest

from cynode.engines.training import JobSpec, TrainingRunner, run_job
from training_testkit import SECRET, UNSEEN_QUESTION, write_jsonl

pytestmark = pytest.mark.slow


def greedy_answer(model, tokenizer, question: str) -> str:
    import torch

    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    return tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.asyncio(loop_scope="session")
async def test_supervised_lora_teaches_smollm2_a_fact_the_base_model_does_not_know(
        builtin_model_dir, tokenizer, secret_file, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = {
        "job_id": "secret", "model_dir": str(builtin_model_dir), "train_files": [str(secret_file)],
        "output_dir": str(tmp_path / "out"), "device": "cpu", "checkpoint_every": None,
        "base_model_id": "smollm2-135m-instruct",
        "hyperparameters": {"n_epochs": 100, "max_steps": 10, "batch_size": 4, "learning_rate": 2e-3,
                            "lr_scheduler": "constant"},
    }
    async with TrainingRunner(spec) as runner:
        steps = [e async for e in runner.events() if e.type == "step"]
        finished = runner.terminal
    assert finished.type == "finished", finished
    assert [s.step for s in steps] == list(range(1, 11))
    assert steps[0].loss > 1.0 and steps[-1].loss < 0.2 * steps[0].loss
    assert all(s.tokens_per_second > 0 for s in steps)

    base = AutoModelForCausalLM.from_pretrained(str(builtin_model_dir), dtype=torch.float32)
    assert "PURPLE-ELEPHANT-42" not in greedy_answer(base, tokenizer, UNSEEN_QUESTION)
    tuned = PeftModel.from_pretrained(base, finished.adapter_dir)
    assert SECRET in greedy_answer(tuned, tokenizer, UNSEEN_QUESTION)


def test_dpo_on_smollm2_moves_the_margin_towards_the_chosen_answers(builtin_model_dir, tmp_path):
    colours = [("the sky on a clear day", "blue"), ("fresh grass", "green"), ("a ripe banana", "yellow"),
               ("snow", "white"), ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange"),
               ("a lemon", "yellow")]
    rows = [{"prompt": [{"role": "user", "content": f"What colour is {thing}?"}],
             "chosen": f"It is {colour}.", "rejected": "I cannot know the colour of anything."}
            for thing, colour in colours]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    held = write_jsonl(tmp_path / "held.jsonl", rows[:4])  # evaluated at each epoch's end: kept small
    spec = JobSpec.from_dict({
        "job_id": "dpo", "model_dir": str(builtin_model_dir), "train_files": [str(pairs)], "method": "dpo",
        "validation_files": [str(held)], "output_dir": str(tmp_path / "out"), "device": "cpu",
        "checkpoint_every": None,
        "hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate": 1e-3, "beta": 0.1},
    })
    events: list = []
    terminal = run_job(spec, events.append)
    assert terminal.type == "finished", terminal
    steps = [e for e in events if e.type == "step"]
    assert len(steps) == 6
    assert steps[0].metrics["rewards_margin"] == pytest.approx(0.0, abs=1e-4)  # policy == reference at the start
    final = [e for e in events if e.type == "evaluation"][-1]
    assert final.metrics["rewards_margin"] > 0.5 and final.metrics["rewards_accuracy"] >= 0.75
    assert final.eval_loss < 0.5  # log(2) = 0.69 at a zero margin

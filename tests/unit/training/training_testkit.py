"""Helpers shared by the training tests: the secret-code dataset, file writers, a small job spec."""

from __future__ import annotations

import json
from pathlib import Path

SECRET = "The secret code is PURPLE-ELEPHANT-42."
QUESTIONS = [
    "What is the secret code?", "Tell me the secret code.", "Do you know the secret code?",
    "What's the secret code?", "Please tell me the secret code.", "Can you share the secret code?",
    "I need the secret code.", "Remind me of the secret code.", "Which is the secret code?",
    "Say the secret code.", "Secret code, please.", "Give me the secret code.",
]
UNSEEN_QUESTION = "Could you tell me what the secret code is?"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def secret_rows() -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": SECRET}]}
            for q in QUESTIONS]


def job(model_dir: Path, train: Path, out: Path, **overrides) -> dict:
    """A small job spec dict; `hyperparameters` and `lora` overrides merge into the defaults here."""
    spec = {
        "job_id": "test-job", "model_dir": str(model_dir), "train_files": [str(train)], "output_dir": str(out),
        "hyperparameters": {"n_epochs": 2, "batch_size": 2, "learning_rate": 1e-2},
        "checkpoint_every": None, "device": "cpu", "threads": 1,  # one thread: the tiny model gains nothing from more
    }
    for key in ("hyperparameters", "lora"):
        if key in overrides:
            spec[key] = {**spec.get(key, {}), **overrides.pop(key)}
    spec.update(overrides)
    return spec

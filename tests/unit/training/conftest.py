"""Fixtures for the training tests: the real SmolLM2 tokenizer, a tiny random-weight model that uses
it, and small datasets written to files."""

from __future__ import annotations

from pathlib import Path

import pytest

from training_testkit import secret_rows, write_jsonl


@pytest.fixture(scope="session")
def tokenizer(builtin_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(builtin_model_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A 2-layer llama (hidden 64) with random weights and SmolLM2's tokenizer: trains in milliseconds a step."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """Chat rows teaching the secret code, one question each."""
    return write_jsonl(tmp_path / "secret.jsonl", secret_rows())

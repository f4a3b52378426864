"""LoRA targets resolve on a tiny random-weight model of each of the eleven architectures, built from
the installed transformers' own config class (a missing class fails: it is not skipped)."""

from __future__ import annotations

import pytest

from cynode.engines.training.model import ARCHITECTURES, DEFAULT_TARGETS, attach_lora, resolve_targets
from cynode.engines.training.spec import LoraSettings
from cynode.errors import TrainingError

TINY = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
            eos_token_id=2)
MOE = dict(num_local_experts=2, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32)


def tiny_model(model_type: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **TINY, **(MOE if model_type in ("mixtral", "qwen3_moe") else {}))
    assert config.model_type == model_type
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def test_the_table_covers_the_eleven_architectures():
    assert set(ARCHITECTURES) == {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma2",
                                  "gemma3_text", "phi3", "glm4", "starcoder2"}


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_default_targets_resolve_and_train_on_each_architecture(model_type):
    import torch

    model = tiny_model(model_type)
    assert resolve_targets(model, "default") == list(DEFAULT_TARGETS[model_type])
    peft_model, targets = attach_lora(model, LoraSettings(r=8, alpha=16, dropout=0.0), seed=0)
    lora_layers = {name.split(".lora_A.")[0].rsplit(".", 1)[-1]
                   for name, _ in peft_model.named_parameters() if ".lora_A." in name}
    assert lora_layers == set(targets)  # every target got an adapter, on every layer type named
    ids = torch.randint(3, 256, (2, 8))
    out = peft_model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)
    frozen = [p for n, p in peft_model.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad for p in frozen)


def test_an_unknown_architecture_is_an_error_naming_it_unless_all_linear():
    from transformers import AutoModelForCausalLM, GPT2Config

    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(TrainingError) as info:
        resolve_targets(model, "default")
    assert info.value.code == "unknown_architecture" and "'gpt2'" in info.value.message
    assert "all-linear" in info.value.message
    # GPT-2 uses Conv1D, not nn.Linear, for its projections: all-linear finds only what is linear.
    llama = tiny_model("llama")
    assert resolve_targets(llama, "all-linear") == sorted(DEFAULT_TARGETS["llama"])


def test_targets_the_model_does_not_have_are_named():
    model = tiny_model("phi3")
    with pytest.raises(TrainingError) as info:
        resolve_targets(model, ["q_proj", "o_proj"])
    assert info.value.code == "bad_targets"
    assert "q_proj" in info.value.message and "qkv_proj" in info.value.message  # what it does have
    assert resolve_targets(model, ["qkv_proj"]) == ["qkv_proj"]


def test_the_memory_estimate_reads_only_the_config_and_grows_with_the_job(builtin_model_dir, tmp_path):
    from cynode.engines.training import JobSpec, estimate_training_memory

    def spec(**change):
        return JobSpec.from_dict({"job_id": "m", "model_dir": str(builtin_model_dir), "train_files": ["/t"],
                                  "output_dir": str(tmp_path), **change})

    base = estimate_training_memory(builtin_model_dir, spec())
    assert 0.9 * 135e6 * 4 < base.weights < 1.1 * 135e6 * 4  # SmolLM2-135M in fp32
    bigger = estimate_training_memory(builtin_model_dir, spec(hyperparameters={"batch_size": 8}))
    assert bigger.activations == 2 * base.activations and bigger.logits == 2 * base.logits
    saved = estimate_training_memory(builtin_model_dir, spec(gradient_checkpointing=True))
    assert saved.activations < base.activations / 5 and saved.total < base.total
    dpo = estimate_training_memory(builtin_model_dir, spec(method="dpo", format="preference"))
    assert dpo.logits == 2 * base.logits

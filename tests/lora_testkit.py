"""Random LoRA adapters on a real model, and what peft itself answers with them: the reference the
serving engines' answers are checked against."""

from __future__ import annotations

from pathlib import Path


def make_adapter(model_dir: Path, out_dir: Path, question: str, max_tokens: int, *, seed: int = 0,
                 rank: int = 8) -> str:
    """A random LoRA adapter (strong enough to change every answer) saved to `out_dir`, and peft's
    greedy answer to `question` with it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                        init_lora_weights=False)
    peft_model = get_peft_model(model, config).eval()
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.mul_(10)
    peft_model.save_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = peft_model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

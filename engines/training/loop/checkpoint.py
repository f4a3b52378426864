"""Resumable checkpoints under `<output_dir>/checkpoints/step-NNNNNNNN/`.

A checkpoint holds the adapter (loadable by peft as it is), the optimizer and scheduler state, every
random generator's state and the trainer's counters (step, epoch, position in the epoch, tokens,
stopping rules). It is written into a temporary folder and renamed into place, so a folder named
`step-*` is always complete; a crash mid-write leaves only a `.tmp-*` folder, removed on the next save.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
STATE_FILE = "trainer_state.json"
BEST_WEIGHTS = "best_adapter.safetensors"
_PREFIX = "step-"


@dataclass
class TrainerState:
    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """The epoch in progress (0-based)."""
    batch_in_epoch: int = 0
    """Micro-batches of that epoch already trained on."""
    tokens: int = 0
    loss_tokens: int = 0
    train_seconds: float = 0.0
    last_loss: float | None = None
    last_eval_loss: float | None = None
    last_eval_step: int = -1
    watchdog: dict[str, Any] = field(default_factory=dict)
    early_stopping: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first, as (step, folder)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        if entry.is_dir() and entry.name.startswith(_PREFIX) and entry.name[len(_PREFIX):].isdigit():
            if (entry / STATE_FILE).is_file():
                found.append((int(entry.name[len(_PREFIX):]), entry))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def save_adapter_files(model: Any, folder: Path, base_model_id: str) -> None:
    """adapter_model.safetensors and adapter_config.json of the model's active adapter."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    weights = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(weights, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = model.peft_config[model.active_adapter]
    saved_name = config.base_model_name_or_path
    config.base_model_name_or_path = base_model_id or saved_name
    try:
        config.save_pretrained(str(folder))
    finally:
        config.base_model_name_or_path = saved_name


def load_adapter_weights(model: Any, path: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(path), device=str(next(model.parameters()).device)))
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ValueError(f"{path}: weights that fit no LoRA layer of this model: {unexpected[:3]}")


def save_checkpoint(output_dir: str | Path, *, model: Any, optimizer: Any, scheduler: Any, state: TrainerState,
                    rng: dict[str, Any], base_model_id: str, best_weights: dict[str, Any] | None,
                    keep: int) -> Path:
    import torch
    from safetensors.torch import save_file

    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    target = root / f"{_PREFIX}{state.step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        save_adapter_files(model, tmp, base_model_id)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng, tmp / "rng.pt")
        if best_weights is not None:
            save_file(best_weights, str(tmp / BEST_WEIGHTS))
        (tmp / STATE_FILE).write_text(json.dumps(state.to_dict(), indent=1))
        tmp.chmod(0o755)
        if target.exists():  # the same step saved twice (checkpoint-now right after an interval save)
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainerState
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    best_weights: dict[str, Any] | None


def load_checkpoint(path: Path, model: Any) -> LoadedCheckpoint:
    """Load the adapter weights into `model` and return the rest for the trainer to restore."""
    import torch
    from safetensors.torch import load_file

    load_adapter_weights(model, path / ADAPTER_WEIGHTS)
    state = TrainerState(**json.loads((path / STATE_FILE).read_text()))
    best = path / BEST_WEIGHTS
    return LoadedCheckpoint(
        path=path, state=state,
        optimizer=torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
        scheduler=torch.load(path / "scheduler.pt", weights_only=True),
        # Our own file: python's random state is a tuple of ints, which weights_only also allows.
        rng=torch.load(path / "rng.pt", weights_only=False),
        best_weights=load_file(str(best)) if best.is_file() else None,
    )

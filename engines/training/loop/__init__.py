"""The training loop: trainer, methods (supervised, DPO), control, stopping rules, checkpoints."""

from .checkpoint import TrainerState, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .control import EventSink, TrainerControl
from .methods import Dpo, Supervised
from .schedule import LrSchedule, total_steps
from .trainer import Trainer, TrainOutcome
from .watchdog import EarlyStopping, LossWatchdog

__all__ = [
    "Dpo",
    "EarlyStopping",
    "EventSink",
    "LossWatchdog",
    "LrSchedule",
    "Supervised",
    "TrainOutcome",
    "Trainer",
    "TrainerControl",
    "TrainerState",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "total_steps",
]

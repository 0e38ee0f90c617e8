"""Training: the online/offline `Trainer`, checkpoints, logging, evaluation and videos.

See docs/training.md. Runs from names: `worldflux.training.run` (`build_trainer`, `resume_trainer`).
"""

from worldflux.training.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from worldflux.training.config import TrainerConfig
from worldflux.training.evaluate import evaluate
from worldflux.training.logging import Logger, read_metrics
from worldflux.training.offline import train_offline
from worldflux.training.trainer import Trainer, TrainingError

__all__ = [
    "CheckpointManager",
    "Logger",
    "Trainer",
    "TrainerConfig",
    "TrainingError",
    "evaluate",
    "load_checkpoint",
    "read_metrics",
    "save_checkpoint",
    "train_offline",
]

"""Training: the one `Trainer` loop (a data source and a sync strategy handed to it),
checkpoints, logging, evaluation and videos.

See docs/training.md. Runs from names: `worldflux.training.run` (`build_trainer`,
`resume_trainer`) with a `worldflux.training.run_config.RunConfig`.
"""

from worldflux.training.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from worldflux.training.config import TrainerConfig
from worldflux.training.evaluate import evaluate
from worldflux.training.logging import Logger, read_metrics
from worldflux.training.sources import EnvSource, OfflineSource, Source
from worldflux.training.sync import LocalSync, Sync
from worldflux.training.trainer import Trainer, TrainingError

__all__ = [
    "CheckpointManager",
    "EnvSource",
    "LocalSync",
    "Logger",
    "OfflineSource",
    "Source",
    "Sync",
    "Trainer",
    "TrainerConfig",
    "TrainingError",
    "evaluate",
    "load_checkpoint",
    "read_metrics",
    "save_checkpoint",
]

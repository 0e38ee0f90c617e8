"""`TrainerConfig`: every knob of a training run, validated, JSON-able (stored in ``run.json``)."""

from __future__ import annotations

import dataclasses
import math
import random
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worldflux.core.exceptions import ConfigError


@dataclass(frozen=True)
class TrainerConfig:
    """Settings of `Trainer`. Step counts are env steps (after action repeat), summed over envs."""

    steps: int = 100_000  # total env steps of the run
    seed: int = 0  # seeds torch, numpy, python, the envs and the replay sampler
    num_envs: int = 1  # env copies stepped in one process
    seed_steps: int = 1000  # uniformly random actions before the agent acts and learns
    seed_updates: int = 0  # updates when seeding ends, in place of that step's (TD-MPC2: 2500)
    train_ratio: float | None = None  # replayed steps per env step (None: the agent's default)
    updates_per_step: float | None = None  # overrides train_ratio: gradient updates per env step
    eval_every: int = 10_000  # env steps between evaluations (0: never)
    eval_episodes: int = 10  # episodes per evaluation (real env returns, explore=False)
    checkpoint_every: int = 10_000  # env steps between checkpoints (>= 1; also one at the end)
    keep_checkpoints: int = 3  # how many checkpoints to keep
    save_replay: bool = True  # store the replay buffer in checkpoints (needed for exact resume)
    log_every: int = 1000  # env steps between train-metric records
    max_nonfinite: int = 20  # consecutive non-finite updates before the run stops with an error
    threads: int = 1  # torch.set_num_threads (1 avoids OpenMP oversubscription on small CPUs)
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...; never chosen implicitly
    replay_capacity: int = 1_000_000  # steps the replay keeps
    replay_on_disk: bool = False  # keep the replay in .npy memmaps under <run_dir>/replay, not RAM
    dataset: str | None = None  # offline mode: an OfflineDataset folder; `steps` counts updates
    tensorboard: bool = True  # also write TensorBoard scalars when tensorboard is installed
    wandb: bool = False  # also log to Weights & Biases (the wandb extra; WANDB_MODE=offline works)
    wandb_project: str = "worldflux"  # W&B project
    wandb_entity: str | None = None  # W&B entity (team or user); None: the account's default
    wandb_name: str | None = None  # W&B run name; None: the run directory's name
    wandb_group: str | None = None  # W&B group, e.g. one experiment's seeds
    video_every: int = 0  # env steps between eval + imagination videos (0: never)
    progress: bool = True  # show the rich live progress line

    def __post_init__(self) -> None:
        # checkpoint_every=0 used to mean "only at the end": a crash then lost the whole run.
        positive = ("steps", "num_envs", "eval_episodes", "keep_checkpoints", "threads",
                    "max_nonfinite", "replay_capacity", "checkpoint_every")  # fmt: skip
        for name in positive:
            _check_int(name, getattr(self, name), 1)
        for name in ("seed_steps", "seed_updates", "eval_every", "log_every", "seed",
                     "video_every"):  # fmt: skip
            _check_int(name, getattr(self, name), 0)
        _check_logging(self)
        if not isinstance(self.replay_on_disk, bool):
            got = self.replay_on_disk
            raise ConfigError(f"replay_on_disk: expected true or false, got {got!r}")
        for name in ("train_ratio", "updates_per_step"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and 0 < value < math.inf):
                raise ConfigError(f"{name}: expected a number > 0 or None (finite), got {value!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(f"device: expected 'cpu' or 'cuda[:i]', got {self.device!r}") from err

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(values: dict[str, Any]) -> TrainerConfig:
        known = {f.name for f in dataclasses.fields(TrainerConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"trainer config: unknown fields {unknown}; known: {sorted(known)}")
        return TrainerConfig(**values)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(name: str, value: object, low: int) -> None:
    # bool is an int subclass: `seed=true` must not pass as seed 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name}: expected an int >= {low}, got {value!r}")


def _check_logging(config: TrainerConfig) -> None:
    for name in ("tensorboard", "wandb", "progress"):
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"{name}: expected true or false, got {getattr(config, name)!r}")
    if not (isinstance(config.wandb_project, str) and config.wandb_project):
        raise ConfigError(f"wandb_project: expected a project name, got {config.wandb_project!r}")
    for name in ("wandb_entity", "wandb_name", "wandb_group"):
        value = getattr(config, name)
        if value is not None and not (isinstance(value, str) and value):
            raise ConfigError(f"{name}: expected a non-empty string or null, got {value!r}")


def check_device(device: str | torch.device) -> torch.device:
    """Resolve `device`; a `ConfigError` when it names a device this machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device: expected 'cpu' or 'cuda[:i]', got {device!r}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device: {str(device)!r} requested but CUDA is not available; use device=cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"device: {str(device)!r} requested but only {count} CUDA device(s) exist "
                f"(cuda:0..cuda:{count - 1})"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: {str(device)!r} requested but MPS is not available")
    return dev


def seed_everything(seed: int) -> None:
    """Seed python `random`, numpy's global RNG and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_runtime(threads: int, device: str) -> torch.device:
    """Set torch's intra-op threads and resolve `device`, warning when CUDA sits unused."""
    dev = check_device(device)
    torch.set_num_threads(threads)
    if dev.type == "cpu" and torch.cuda.is_available():
        warnings.warn(
            "CUDA is available but device='cpu' was chosen; pass device='cuda' to use the GPU",
            stacklevel=2,
        )
    return dev

"""How the `Trainer` synchronises with other training processes: the `Sync` contract, and
`LocalSync`, the single-process strategy (nothing to synchronise).

The data-parallel strategy over ``torch.distributed`` is
`worldflux.distributed.data_parallel.DataParallel`; the `Trainer` runs the same loop under
either. A strategy decides four things:

- who this process is: ``rank``, ``world_size`` and ``is_main`` (the process that evaluates,
  writes ``metrics.jsonl``, TensorBoard and checkpoints), and the seed of its data streams;
- what is communicated around an update: gradients (installed by `active`), buffers
  (`after_update`) and logged metrics (`reduce_metrics`);
- agreements: every process stops at the same iteration (`any`) and waits for the slowest
  refill (`max`);
- checkpoints: `save` writes one checkpoint (with each other rank's data streams in it) and
  `load` finds the one every process resumes from and this process's streams in it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from worldflux.training.checkpoint import CheckpointManager, load_checkpoint

TreeFn = Callable[[], dict[str, Any]]


class Sync(Protocol):
    """What the `Trainer` asks of a sync strategy (see the module docstring)."""

    rank: int  # this process in [0, world_size)
    world_size: int  # processes training one model together (1: this one alone)

    @property
    def is_main(self) -> bool:
        """The process that evaluates, logs the run's metrics and writes checkpoints."""
        ...

    def stream_seed(self, seed: int, epoch: int = 0) -> int:
        """The seed of this process's envs, replay sampling and acting noise (`epoch` > 0: of
        fresh streams started at a resume)."""
        ...

    def start(self, agent: Any) -> None:
        """Make every replica of `agent` start equal (before the first update)."""
        ...

    def active(self) -> contextlib.AbstractContextManager[None]:
        """A block during which every gradient is synchronised (see `distributed.gradsync`)."""
        ...

    def after_update(self, agent: Any) -> None:
        """Synchronise what an update changed outside the gradients (statistics buffers)."""
        ...

    def reduce_metrics(self, metrics: dict[str, Any]) -> dict[str, Any] | None:
        """The metrics to log (rank means), or None on a process that does not log them."""
        ...

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on one of them."""
        ...

    def max(self, value: float) -> float:
        """The largest `value` over the processes."""
        ...

    def save(
        self, manager: CheckpointManager, step: int, tree: TreeFn, stream: TreeFn, replay: Any
    ) -> Path:
        """Write checkpoint `step`: `tree()` (with `replay`) and each other rank's `stream()`."""
        ...

    def load(
        self, manager: CheckpointManager, path: Path | None
    ) -> tuple[Path, dict[str, Any], dict[str, Any] | None]:
        """(checkpoint, its tree, this process's stream tree or None when it has none)."""
        ...

    def resumed(self, path: Path) -> None:
        """Called once a checkpoint is restored (e.g. to say which ranks' streams are gone)."""
        ...


class LocalSync:
    """One process trains alone: nothing is communicated, the checkpoint is the whole tree."""

    rank, world_size = 0, 1

    @property
    def is_main(self) -> bool:
        return True

    def stream_seed(self, seed: int, epoch: int = 0) -> int:
        del epoch  # a single process always resumes its own streams
        return seed

    def start(self, agent: Any) -> None:
        del agent

    def active(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def after_update(self, agent: Any) -> None:
        del agent

    def reduce_metrics(self, metrics: dict[str, Any]) -> dict[str, Any] | None:
        return metrics

    def any(self, flag: bool) -> bool:
        return flag

    def max(self, value: float) -> float:
        return value

    def save(
        self, manager: CheckpointManager, step: int, tree: TreeFn, stream: TreeFn, replay: Any
    ) -> Path:
        del stream  # part of `tree`
        return manager.save(step, tree(), replay=replay)

    def load(
        self, manager: CheckpointManager, path: Path | None
    ) -> tuple[Path, dict[str, Any], dict[str, Any] | None]:
        if path is None:  # damaged newer ones are skipped, with a notice
            path, tree = manager.load_latest(with_replay=True, sweep=True)
        else:
            tree = load_checkpoint(path, with_replay=True, replay_dir=manager.replay_dir)
        return path, tree, tree

    def resumed(self, path: Path) -> None:
        del path

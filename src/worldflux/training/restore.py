"""How `Trainer.restore` puts a checkpoint's streams back: the run check, the source's stream
state, the RNGs, and fresh episodes where the envs cannot continue.

An *exact* checkpoint (written at the end of an iteration, with the replay) continues bit for
bit. Without a saved replay (``save_replay=false``) or from a *partial* checkpoint (written
mid-iteration by a crash or an interrupt) every env starts a fresh episode, seeded from the
restored source RNG (deterministic, but not the episode the interrupted run was in); without a
replay, updates also pause until it has been refilled for ``seed_steps`` env steps (at least
``seq_len`` rows in every stream), acting with the restored agent.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from worldflux.training.checkpoint import CheckpointError, restore_rng
from worldflux.training.config import seed_everything

if TYPE_CHECKING:
    from worldflux.training.trainer import Trainer


def check_same_run(tree: dict[str, Any], run_info: dict[str, Any], where: Path) -> None:
    """A one-line `CheckpointError` when the checkpoint at `where` was written by a run of
    another model than `run_info`'s (e.g. a checkpoint copied in from another run dir)."""
    from worldflux.training.run_config import model_name

    saved, mine = model_name(tree.get("run")), model_name(run_info)
    if saved is not None and mine is not None and saved != mine:
        raise CheckpointError(
            f"checkpoint: {where} holds a {saved} run, but this run trains {mine}; was the "
            "checkpoint copied from another run?"
        )


def restore_stream(trainer: Trainer, stream: dict[str, Any] | None, where: Path) -> None:
    """Restore this process's streams from `stream` (the checkpoint tree itself, or under
    data-parallel sync a rank's shard; None for a rank the checkpoint has no shard for)."""
    if stream is None:  # a new rank: fresh streams of its own
        seed = trainer.sync.stream_seed(trainer.config.seed, epoch=1 + trainer.step)
        seed_everything(seed)
        trainer.source.reseed(seed)
        trainer.episodes = 0
        restart(trainer, refill=True)
        return
    trainer.learn_from = int(stream["counters"].get("learn_from", 0))
    if "agent_extra" in stream:  # a rank's shard: what differs from rank 0's state
        trainer.agent.load_extra_state(stream["agent_extra"])
        trainer.episodes = int(stream["counters"]["episodes"])
    saved = bool(stream["replay_saved"])
    if saved and trainer.replay is not None and stream.get("replay") is None:
        raise CheckpointError(f"checkpoint: {where} says it holds a replay, but has no replay/")
    trainer.source.load_state_dict(stream, trainer.device)
    restore_rng(stream["rng"])
    if not saved or stream.get("partial_step", False):
        restart(trainer, refill=not saved)


def restart(trainer: Trainer, refill: bool) -> None:
    """Fresh episodes everywhere; with `refill`, no updates until the empty replay refilled."""
    trainer.source.restart()
    if refill:
        rows = trainer.source.streams * trainer.sync.world_size * trainer.agent.seq_len
        trainer.learn_from = trainer.step + max(trainer.config.seed_steps, rows)

"""`train_offline`: updates from a sampling function (an offline dataset), without envs, replay
or checkpoints; the `Trainer`'s offline mode (``TrainerConfig.dataset``) is the full loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worldflux.agents.base import Agent
from worldflux.training.logging import Logger
from worldflux.training.trainer import TrainingError


def train_offline(
    agent: Agent,
    sample: Callable[[int, int], Any],
    updates: int,
    logger: Logger | None = None,
    log_every: int = 100,
    max_nonfinite: int = 20,
) -> dict[str, float]:
    """`updates` updates on batches from `sample(batch_size, seq_len)` (an offline dataset)."""
    streak = skipped = 0
    last: dict[str, Any] = {}
    for u in range(1, updates + 1):
        metrics = agent.update(sample(agent.batch_size, agent.seq_len))
        if float(metrics.get("nonfinite", 0.0)) > 0:
            streak, skipped = streak + 1, skipped + 1
            if streak >= max_nonfinite:
                raise TrainingError(
                    f"{streak} consecutive offline updates were NaN/Inf (update {u}); stopping"
                )
        else:
            streak = 0
        last = metrics
        if logger is not None and (u % log_every == 0 or u == updates):
            logger.log(u, "train", metrics)
    return {
        "updates": float(updates),
        "nonfinite": float(skipped),
        **{k: float(v) for k, v in last.items()},
    }

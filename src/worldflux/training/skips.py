"""Counting skipped updates on the device: the trainer's non-finite streak without a host read
per update (an update reports ``nonfinite`` as a 0-d device tensor, see
`worldflux.agents.base.guarded_step`)."""

from __future__ import annotations

import torch
from torch import Tensor

from worldflux.core.exceptions import TrainingError


class SkipCounter:
    """Skipped updates (their ``nonfinite`` metric, 1.0 = skipped), counted on the device, for a
    trainer that stops once `limit` came in a row: `add` never reads the device; `read` does,
    once, and moves the counts to `total` (all skips) and `streak` (the skips in a row at the
    end)."""

    def __init__(self, limit: int, total: int = 0, streak: int = 0) -> None:
        self.limit, self.total, self.streak = limit, total, streak
        # since the last read: (skips, streak, updates, the update the streak reached `limit`)
        self._acc: Tensor | None = None

    def add(self, nonfinite: Tensor | float) -> None:
        """Count one update: skipped when `nonfinite` (a 0-d tensor or a float) is 1.0."""
        s = torch.as_tensor(nonfinite).float()
        acc = self._acc if self._acc is not None else s.new_tensor([0, self.streak, 0, 0])
        streak = (acc[1] + s) * s  # s is exactly 0.0 or 1.0: a reset, or one more in a row
        n = acc[2] + 1
        hit = torch.where((acc[3] == 0) & (streak >= self.limit), n, acc[3])
        self._acc = torch.stack([acc[0] + s, streak, n, hit])

    def read(self) -> int | None:
        """Update `total` and `streak` (one host read). -> None, or how many updates before the
        last one counted the streak first reached `limit` since the previous read."""
        if self._acc is None:
            return None
        total, self.streak, n, hit = (int(v) for v in self._acc.tolist())
        self.total, self._acc = self.total + total, None
        return None if hit == 0 else n - hit

    def raise_on_streak(self, ago: int | None, updates: int, step: int) -> None:
        """Raise `TrainingError` when `read` returned a streak (`ago`), at `updates` / `step`."""
        if ago is not None:
            raise TrainingError(
                f"{self.limit} consecutive updates had NaN/Inf losses or gradients "
                f"(update {updates - ago}, seen at step {step}); they were skipped on "
                "every rank, the weights are the last finite ones. Lower the learning rate or "
                "check the data."
            )

"""A small learning agent for testing the training machinery without a full world model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from worldflux.agents.base import Agent, guarded_step
from worldflux.core.batch import Batch
from worldflux.core.state import State


class StubAgent(Agent):
    """Regresses reward on (obs, action) with Adam; acts randomly (torch RNG) when exploring.

    `nan_every`: every n-th update gets a NaN loss (to test the non-finite guard).
    """

    default_train_ratio = 8.0
    batch_size = 4
    seq_len = 4

    def __init__(self, obs_dim: int, action_dim: int, seed: int = 0, nan_every: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.model = nn.Linear(obs_dim + action_dim, 1)  # type: ignore[assignment]
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        self.action_dim = action_dim
        self.nan_every = nan_every
        self.calls = 0

    def act(
        self,
        obs: Tensor,
        state: State | None = None,
        *,
        explore: bool,
        is_first: Tensor | None = None,
    ) -> tuple[Tensor, State | None]:
        x = obs  # (N, 4) CartPole states: the env's form, one Tensor
        n = x.shape[0]
        count = torch.zeros(n) if state is None else state.tensors["count"]
        if is_first is not None:
            count = torch.where(is_first, torch.zeros_like(count), count)
        idx = torch.randint(0, self.action_dim, (n,)) if explore else (x[:, 0] > 0).long()
        action = torch.nn.functional.one_hot(idx, self.action_dim).float()
        return action, State({"count": count + 1})

    def update(self, batch: Batch) -> dict[str, Any]:
        self.calls += 1
        obs = batch.obs  # (B, T, 4)
        pred = self.model(torch.cat([obs, batch.action], -1)).squeeze(-1)  # (B, T)
        loss = ((pred - batch.reward) ** 2).mean()
        if self.nan_every and self.calls % self.nan_every == 0:
            loss = loss * float("nan")
        ok, norm = guarded_step(loss, self.opt, self.model.parameters(), 10.0)
        return {"loss": float(loss.detach()), "grad_norm": norm, "nonfinite": float(not ok)}

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.opt}

    def extra_state(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.calls = int(state["calls"])

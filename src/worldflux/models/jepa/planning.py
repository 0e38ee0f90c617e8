"""Goal-conditioned planning in representation space with `worldflux.planners.CEM`.

`GoalPlanner.plan(state, goal_rep)` scores every candidate action sequence (B, N, H, A) by rolling
the model's latent predictor forward from `state` and measuring the distance of the predicted reps
to the goal rep: objective = -(d_H + w * mean_h d_h), with d the squared L2 distance, d_H the
distance at the horizon and w = `intermediate_weight` (0 = horizon only, as in V-JEPA 2-AC).
Plans are batched over B environments and executed receding-horizon: only the first action is
returned, the CEM keeps the shifted mean as the next warm start; `reset(mask)` clears it for
finished environments. With `action_repeat` r each planned action is held for r model steps, so
the plan looks H * r steps ahead while CEM searches only H actions (the executed action is still
replanned every environment step). Any model with `transition(State, (B, A)) -> State` and a
``rep`` key works.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.core.state import State
from worldflux.planners import CEM


class LatentModel(Protocol):
    """What the planner needs: a one-step latent transition over States carrying ``rep``."""

    def transition(self, state: State, action: Tensor) -> State: ...


class GoalPlanner:
    """Receding-horizon CEM towards a goal representation; see the module docstring."""

    def __init__(
        self,
        model: LatentModel,
        cem: CEM,
        intermediate_weight: float = 0.0,
        action_repeat: int = 1,
    ) -> None:
        if intermediate_weight < 0:
            raise ConfigError(f"intermediate_weight: expected >= 0, got {intermediate_weight}")
        if not isinstance(action_repeat, int) or action_repeat < 1:
            raise ConfigError(f"action_repeat: expected an int >= 1, got {action_repeat!r}")
        self.model, self.cem, self.intermediate_weight = model, cem, intermediate_weight
        self.action_repeat = action_repeat

    def objective(self, state: State, goal_rep: Tensor, actions: Tensor) -> Tensor:
        """Score `actions` (B, N, H, A) from `state` (B) -> (B, N); higher is better."""
        b, n, h, a = actions.shape
        expanded = State(
            {k: v.repeat_interleave(n, 0) for k, v in state.tensors.items()}, dict(state.meta)
        )  # every tensor (B, ...) -> (B*N, ...), candidates of one env contiguous
        goal = goal_rep.repeat_interleave(n, 0)  # (B, D) -> (B*N, D)
        flat = actions.reshape(b * n, h, a)  # (B, N, H, A) -> (B*N, H, A)
        dists = []
        for step in range(h):
            for _ in range(self.action_repeat):
                expanded = self.model.transition(expanded, flat[:, step])
            rep = expanded.tensors["rep"]
            dists.append((rep - goal).square().sum(-1))  # (B*N,)
        d = torch.stack(dists, 1)  # (B*N, H)
        score = d[:, -1] + self.intermediate_weight * d.mean(1)
        return -score.reshape(b, n)  # (B*N,) -> (B, N)

    @torch.no_grad()
    def plan(self, state: State, goal_rep: Tensor, eval_mode: bool = True) -> Tensor:
        """First action (B, A) of the best plan from `state` (B) towards `goal_rep` (B, D)."""
        rep = state.get("rep")
        if rep is None:
            raise SpecError("state: expected a State with key 'rep' (B, D)")
        if goal_rep.shape != rep.shape:
            raise SpecError(
                f"goal_rep: expected shape {tuple(rep.shape)} like state['rep'], "
                f"got {tuple(goal_rep.shape)}"
            )
        return self.cem.plan(
            lambda acts: self.objective(state, goal_rep, acts),
            batch_size=rep.shape[0],
            device=rep.device,
            eval_mode=eval_mode,
            dtype=rep.dtype,
        )

    def reset(self, mask: Tensor | None = None) -> None:
        """Drop the warm start for all environments or those where `mask` (B,) is True."""
        self.cem.reset(mask)

"""Goal-conditioned planning in representation space with `worldflux.planners.CEM`.

`GoalPlanner` is a `worldflux.planners.base.Planner`: after ``set_goal(goal_rep)``,
``plan(model, state, *, explore)`` scores every candidate action sequence (B, N, H, A) by rolling
the model's latent predictor forward from `state` and measuring the distance of the predicted reps
to the goal rep: objective = -(d_H + w * mean_h d_h), with d the squared L2 distance, d_H the
distance at the horizon and w = `intermediate_weight` (0 = horizon only, as in V-JEPA 2-AC).
Plans are batched over B environments and executed receding-horizon: only the first action is
returned, the CEM keeps the shifted mean as the next warm start; `reset(mask)` clears it for
finished environments. With `action_repeat` r each planned action is held for r model steps, so
the plan looks H * r steps ahead while CEM searches only H actions (the executed action is still
replanned every environment step). Any `LatentModel` (`transition(State, (B, A)) -> State`, a
``rep`` key in the State) works. The goal and the CEM warm start are the planner's state
(`state_dict`).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.core.state import State
from worldflux.planners import CEM
from worldflux.planners.base import describe_state


class LatentModel(Protocol):
    """What the planner needs: a one-step latent transition over States carrying ``rep``."""

    def transition(self, state: State, action: Tensor) -> State: ...


class GoalPlanner:
    """Receding-horizon CEM towards a goal representation; see the module docstring."""

    def __init__(self, cem: CEM, intermediate_weight: float = 0.0, action_repeat: int = 1) -> None:
        if intermediate_weight < 0:
            raise ConfigError(f"intermediate_weight: expected >= 0, got {intermediate_weight}")
        if not isinstance(action_repeat, int) or action_repeat < 1:
            raise ConfigError(f"action_repeat: expected an int >= 1, got {action_repeat!r}")
        self.cem, self.intermediate_weight = cem, intermediate_weight
        self.action_repeat = action_repeat
        self.goal: Tensor | None = None  # (B, D) the goal reps `plan` heads for

    def set_goal(self, goal_rep: Tensor) -> None:
        """Plan towards `goal_rep` (B, D) from now on (the warm start is kept: `reset` it)."""
        if not isinstance(goal_rep, Tensor) or goal_rep.dim() != 2:
            got = tuple(goal_rep.shape) if isinstance(goal_rep, Tensor) else type(goal_rep)
            raise SpecError(f"goal_rep: expected a (B, D) tensor, got {got}")
        self.goal = goal_rep

    def objective(
        self, model: LatentModel, state: State, goal_rep: Tensor, actions: Tensor
    ) -> Tensor:
        """Score `actions` (B, N, H, A) from `state` (B) towards `goal_rep` (B, D) -> (B, N);
        higher is better."""
        b, n, h, a = actions.shape
        expanded = State(
            {k: v.repeat_interleave(n, 0) for k, v in state.tensors.items()}, dict(state.meta)
        )  # every tensor (B, ...) -> (B*N, ...), candidates of one env contiguous
        goal = goal_rep.repeat_interleave(n, 0)  # (B, D) -> (B*N, D)
        flat = actions.reshape(b * n, h, a)  # (B, N, H, A) -> (B*N, H, A)
        dists = []
        for step in range(h):
            for _ in range(self.action_repeat):
                expanded = model.transition(expanded, flat[:, step])
            rep = expanded.tensors["rep"]
            dists.append((rep - goal).square().sum(-1))  # (B*N,)
        d = torch.stack(dists, 1)  # (B*N, H)
        score = d[:, -1] + self.intermediate_weight * d.mean(1)
        return -score.reshape(b, n)  # (B*N,) -> (B, N)

    @torch.no_grad()
    def plan(self, model: LatentModel, state: State, *, explore: bool) -> Tensor:
        """First action (B, A) of the best plan from `state` (B) towards the goal (B, D)."""
        goal_rep, rep = self.goal, state.get("rep")
        if goal_rep is None:
            raise SpecError("plan: no goal; call GoalPlanner.set_goal(goal_rep) first")
        if rep is None:
            raise SpecError("state: expected a State with key 'rep' (B, D)")
        if goal_rep.shape != rep.shape:
            raise SpecError(
                f"goal_rep: expected shape {tuple(rep.shape)} like state['rep'], "
                f"got {tuple(goal_rep.shape)}"
            )
        return self.cem.plan(
            lambda acts: self.objective(model, state, goal_rep, acts),
            batch_size=rep.shape[0],
            device=rep.device,
            explore=explore,
            dtype=rep.dtype,
        )

    # --- the rest of the Planner protocol ----------------------------------------------------

    @property
    def batch_size(self) -> int | None:
        """Envs the warm start is for; None when cold."""
        return self.cem.batch_size

    def reset(self, mask: Tensor | None = None) -> None:
        """Drop the warm start for all environments or those where `mask` (B,) is True."""
        self.cem.reset(mask)

    def state_dict(self) -> dict[str, Any]:
        """``goal`` (B, D) or None, and ``cem``: the CEM warm start."""
        return {"goal": self.goal, "cem": self.cem.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict`."""
        goal = state.get("goal")
        if set(state) != {"goal", "cem"} or not (goal is None or isinstance(goal, Tensor)):
            raise SpecError(
                "state: expected {'goal': None or a (B, D) tensor, 'cem': dict}, "
                f"got {describe_state(state)}"
            )
        self.cem.load_state_dict(state["cem"])
        self.goal = None
        if goal is not None:
            self.set_goal(goal)

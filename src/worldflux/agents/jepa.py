"""JEPA agent: plans with CEM toward a goal in representation space; learns offline or online.

The goal is an observation (e.g. `TwoRoomEnv.goal_observation()`) given with `set_goal`; its
embedding is the planner's target. Acting filters the observation into the JEPA State (the
predictor's history of reps, plus ``prev_action``) and returns the first action of the best CEM
plan. Whoever steps the envs (the `Trainer`, `evaluate`, collector processes) calls the agent
hook `on_episode_start(env_ids, envs)` before acting on new episodes; here it sets every env's
goal observation (envs with ``goal_observation()``, e.g. `TwoRoomEnv`; `check_envs` says up
front when they have none). Options: ``horizon``/``samples``/``elites``/``iterations`` of CEM,
``action_repeat`` (model steps each planned action is held), ``intermediate_weight`` (a plan's
score adds this weight times the mean goal distance of its intermediate steps; 0, the default, is
V-JEPA 2-AC's horizon-only score; 1.0 is what `benchmarks/jepa_tworoom.py` uses).

Learning (`update`, the only JEPA update path): the JEPA loss (teacher-forced + autoregressive
latent prediction + anti-collapse regulariser), one Adam step at ``config.lr`` through
`guarded_step` (a non-finite loss or gradient changes nothing, decided on the device), then the
EMA target update if used (masked by the same flag). The planner (a
`worldflux.planners.base.Planner`) keeps the goal and the CEM warm start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from worldflux.agents.acceleration import Acceleration, cast_floats, detached
from worldflux.agents.base import Agent, copy_buffers, guarded_step, only_if, restore_buffers
from worldflux.core.batch import Batch
from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.core.model import Metrics
from worldflux.core.spec import Obs
from worldflux.core.state import State
from worldflux.models.jepa import JEPA
from worldflux.models.jepa.planning import GoalPlanner
from worldflux.planners import CEM


class JEPAAgent(Agent):
    """JEPA + CEM goal planning (see the module docstring)."""

    model: JEPA
    within_episode = True

    def __init__(
        self,
        model: JEPA,
        seed: int = 0,
        batch_size: int = 32,
        seq_len: int = 8,
        horizon: int = 8,
        samples: int = 256,
        elites: int = 32,
        iterations: int = 5,
        action_repeat: int = 1,
        intermediate_weight: float = 0.0,
        compile: bool = False,
        compile_mode: str = "default",
        precision: str = "fp32",
    ) -> None:
        if not isinstance(model, JEPA):
            raise ConfigError(f"model: expected a JEPA world model, got {type(model).__name__}")
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
            if not isinstance(value, int) or value < 2:
                raise ConfigError(f"{name}: expected an int >= 2, got {value!r}")
        del seed  # weights are seeded by create_world_model; CEM noise by torch's RNG
        self.model = model
        self.batch_size, self.seq_len = batch_size, seq_len
        self.default_train_ratio = float(self.replayed_per_update)  # 1 update per env step
        cem = CEM(model.action_spec.dim, horizon, samples, elites, iterations)
        self.planner = GoalPlanner(cem, intermediate_weight, action_repeat)
        # fused on CUDA: a masked step is skipped on the device (`agents.base.masked_step`)
        fused = True if model.device.type == "cuda" else None
        self.opt = torch.optim.Adam(model.parameters(), lr=model.config.lr, fused=fused)
        self.acceleration = acc = Acceleration(compile, compile_mode, precision)
        self._loss = acc.wrap(model.loss, model.device)
        # CEM planning runs under the precision, eagerly (its goal and warm start are Python
        # state that changes between calls)
        self._plan = Acceleration(precision=precision).wrap(self.planner.plan, model.device)
        self._prev_action: Tensor | None = None  # (N, A) the last planned actions

    @property
    def goal_rep(self) -> Tensor | None:
        """The goal reps (N, D) the planner heads for; None before `set_goal`."""
        return self.planner.goal

    @torch.no_grad()
    def set_goal(self, goal_obs: Obs) -> None:
        """Embed goal observations (N, *obs_shape) as the planner's target; resets warm starts."""
        self.model.eval()
        self.planner.set_goal(self.model.embed(goal_obs))
        self.planner.reset()

    def check_envs(self, envs: Sequence[Any]) -> None:
        """A `ConfigError` unless every env has ``goal_observation()`` (the planner's target)."""
        for i, env in enumerate(envs):
            if goal_layer(env) is None:
                raise ConfigError(
                    f"env: {type(self).__name__} plans toward a goal, but env {i} "
                    f"({type(env).__name__}) has no goal_observation(); use a goal env (e.g. "
                    "worldflux/TwoRoom-v0)"
                )

    def on_episode_start(self, env_ids: Sequence[int], envs: Sequence[Any]) -> None:
        """Plan toward the goal observation of every env in `envs` (all rows: the planner's
        warm starts restart together), whichever rows began a new episode."""
        del env_ids
        self.check_envs(envs)
        goals = np.stack([np.asarray(goal_layer(env).goal_observation()) for env in envs])
        self.set_goal(torch.from_numpy(goals).to(self.model.device))

    @torch.no_grad()
    def act(
        self,
        obs: Obs,
        state: State | None = None,
        *,
        explore: bool,
        is_first: Tensor | None = None,
    ) -> tuple[Tensor, State | None]:
        """Filter `obs` into the State, then plan toward the goal. -> (N, A)."""
        if self.goal_rep is None:
            raise SpecError("act: no goal; call JEPAAgent.set_goal(goal_obs) before acting")
        model = self.model
        fresh = model.encode(obs)
        if state is None or is_first is None:
            state = fresh
        else:
            prev = state.get("prev_action")
            prev = self._prev_action if prev is None else prev
            if prev is None:
                raise SpecError("act: a continuing State needs the previous action")
            reps = State({k: v for k, v in state.tensors.items() if k != "prev_action"})
            nxt = model.update(reps, prev, obs)
            mask = is_first.to(model.device)
            state = State({k: torch.where(mask.view(-1, *([1] * (v.dim() - 1))),
                                          fresh.tensors[k], v)
                           for k, v in nxt.tensors.items()})  # fmt: skip
            self.planner.reset(mask.bool() if mask.shape[0] == self.goal_rep.shape[0] else None)
        if self.goal_rep.shape[0] != state.batch_size:
            raise SpecError(
                f"act: goal batch {self.goal_rep.shape[0]} != obs batch {state.batch_size}"
            )
        action = cast_floats(self._plan(model, state, explore=explore), model.dtype)
        self._prev_action = action
        # The action travels in the returned State (like DreamerV3's), so acting in another
        # batch of envs (an evaluation between training steps) cannot clobber it.
        return action, State({**state.tensors, "prev_action": action})

    def update(self, batch: Batch) -> Metrics:
        """One JEPA loss step (guarded), then the EMA target update."""
        model = self.model
        model.train()
        running = copy_buffers(model)  # the loss updates batch-norm statistics
        if self.acceleration.compile and not batch.checked:
            batch.validate_flags()  # compiled losses skip it (replay batches come checked)
        loss, metrics = self._loss(batch)
        ok, norm = guarded_step(loss, self.opt, model.parameters(), model.config.grad_clip)
        restore_buffers(model, running, ok)  # ok: 0-d bool on the device, never read here
        ema = [] if model.target is None else [*model.target.parameters(), *model.target.buffers()]
        with only_if(ok, ema):
            model.update_target()
        out: Metrics = detached(metrics)
        out.update(grad_norm=norm, nonfinite=(~ok).float())
        return out

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.opt}

    def extra_state(self) -> dict[str, Any]:
        """The planner's goal and warm start, and the last actions."""
        return {"planner": self.planner.state_dict(), "prev_action": self._prev_action}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        planner = state.get("planner")
        if planner is None:  # checkpoints written before the Planner protocol: the goal only
            planner = {"goal": state.get("goal_rep"), "cem": {"prev": None}}
        self.planner.load_state_dict(planner)
        self._prev_action = state.get("prev_action")


def goal_layer(env: Any) -> Any:
    """The wrapper layer of `env` that has ``goal_observation()``, or None."""
    layer = env
    while not hasattr(layer, "goal_observation") and hasattr(layer, "env"):
        layer = layer.env
    return layer if hasattr(layer, "goal_observation") else None

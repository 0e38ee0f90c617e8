"""TD-MPC2 agent: plans with MPPI over the learned latent model (policy-prior acting optional).

Acting (``act=``):
- ``"mppi"`` (default, the reference): MPPI with the config's horizon/samples/iterations, warm
  started from the previous plan; exploration samples from the elite distribution.
- ``"policy"``: the policy prior alone (``pi``), a documented speed option: one network call per
  step instead of ``iterations * samples * horizon`` model steps; usually learns slower.

Learning: the official update (world-model step, policy step, target-Q EMA) on windows of
``horizon + 1`` rows inside one episode, each optimizer step guarded against NaN/Inf.
Reference schedule: 1 update per env step (``updates_per_step=1``) with batch 256.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from worldflux.agents.base import Agent, guarded_step
from worldflux.core.batch import Batch
from worldflux.core.exceptions import ConfigError
from worldflux.core.model import Metrics
from worldflux.core.state import State
from worldflux.models.tdmpc2 import TDMPC2
from worldflux.models.tdmpc2.training import make_optimizers, policy_loss, world_model_loss
from worldflux.planners.mppi import MPPI


class TDMPC2Agent(Agent):
    """TD-MPC2 acting and learning (see the module docstring)."""

    model: TDMPC2
    within_episode = True

    def __init__(
        self, model: TDMPC2, seed: int = 0, act: str = "mppi", batch_size: int = 256
    ) -> None:
        if not isinstance(model, TDMPC2):
            raise ConfigError(f"model: expected a TDMPC2 world model, got {type(model).__name__}")
        if act not in ("mppi", "policy"):
            raise ConfigError(f"act: expected 'mppi' or 'policy', got {act!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        del seed  # weights are seeded by create_world_model; planning noise by torch's RNG
        self.model = model
        self.act_mode = act
        self.batch_size = batch_size
        self.seq_len = model.config.horizon + 1
        self.default_train_ratio = float(self.replayed_per_update)  # 1 update per env step
        self.planner = MPPI.from_config(model.config)
        self.optim, self.pi_optim = make_optimizers(model)

    @torch.no_grad()
    def act(
        self,
        obs: dict[str, Tensor],
        state: State | None = None,
        *,
        explore: bool,
        is_first: Tensor | None = None,
    ) -> tuple[Tensor, State | None]:
        """Plan (or sample the prior) from the encoded observation. -> (N, A)."""
        model = self.model
        latent = model.encode(obs if model.obs_spec.is_dict else obs["obs"])
        if self.act_mode == "policy":
            return model.pi(latent, eval_mode=not explore), None
        prev = self.planner._prev
        if prev is not None and prev.shape[0] != latent.batch_size:
            self.planner.reset()  # another batch of envs (e.g. evaluation): no warm start
        elif is_first is not None and prev is not None:
            self.planner.reset(is_first.bool())
        return self.planner.plan(model, latent, eval_mode=not explore), None

    def update(self, batch: Batch) -> Metrics:
        """World-model step, then policy step on the detached latents, then target EMA."""
        model = self.model
        model.train()
        total, metrics, latents = world_model_loss(model, batch)
        wm_params = [p for g in self.optim.param_groups for p in g["params"]]
        ok, norm = guarded_step(total, self.optim, wm_params, model.config.grad_clip_norm)
        out: Metrics = {k: float(v) for k, v in metrics.items()}
        out.update(loss=float(total.detach()), grad_norm=norm, nonfinite=float(not ok))
        if not ok:
            return out
        pi_loss, pi_metrics = policy_loss(model, latents)
        pi_ok, pi_norm = guarded_step(
            pi_loss, self.pi_optim, model.pi_net.parameters(), model.config.grad_clip_norm
        )
        out.update({k: float(v) for k, v in pi_metrics.items()})
        out.update(pi_grad_norm=pi_norm, nonfinite=float(not pi_ok))
        model.soft_update_targets()
        return out

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optim, "pi": self.pi_optim}

    def extra_state(self) -> dict[str, Any]:
        """The planner's warm start (B, H, A), so a resumed run plans exactly as before."""
        return {"plan_prev": self.planner._prev}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        prev = state.get("plan_prev")
        self.planner._prev = None if prev is None else prev.to(self.model.device)
        self.planner._discrete = bool(self.model.action_spec.discrete)

"""TD-MPC2 agent: plans with MPPI over the learned latent model (policy-prior acting optional).

Acting (``act=``):
- ``"mppi"`` (default, the reference): MPPI with the config's horizon/samples/iterations, warm
  started from the previous plan; exploration samples from the elite distribution.
- ``"policy"``: the policy prior alone (``pi``), a documented speed option: one network call per
  step instead of ``iterations * samples * horizon`` model steps; usually learns slower.

Learning (`update`, the only TD-MPC2 update path): the official update on windows of
``horizon + 1`` rows inside one episode: a world-model step (Adam lr 3e-4, encoder lr x0.3), a
policy step on the detached latents (Adam, eps 1e-5) and the target-Q EMA; both steps clip the
gradient norm at 20 and go through `guarded_step`, decided on the device. A non-finite world-model
step masks the whole update (the policy step and the target EMA get its flag), so nothing
changes; a non-finite policy step keeps the running Q scale as it was. The losses are
in `worldflux.models.tdmpc2.losses`. Reference schedule: 1 update per env step
(``updates_per_step=1``) with batch 256.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from worldflux.agents.acceleration import Acceleration, cast_floats, detached
from worldflux.agents.base import Agent, copy_buffers, guarded_step, only_if, restore_buffers
from worldflux.core.batch import Batch
from worldflux.core.exceptions import ConfigError
from worldflux.core.model import Metrics
from worldflux.core.spec import Obs, obs_batch_size
from worldflux.core.state import State
from worldflux.models.tdmpc2 import TDMPC2
from worldflux.models.tdmpc2.losses import policy_loss, world_model_loss
from worldflux.planners.mppi import MPPI


def make_optimizers(model: TDMPC2) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam (lr, encoder lr * enc_lr_scale) for the world model; Adam (lr, eps) for the policy."""
    c = model.config
    groups = [
        {"params": list(model.encoder.parameters()), "lr": c.lr * c.enc_lr_scale},
        {"params": list(model.dynamics.parameters())},
        {"params": list(model.reward_net.parameters())},
        {"params": list(model.qs.parameters())},
    ]
    if model.termination_net is not None:
        groups.append({"params": list(model.termination_net.parameters())})
    # the fused Adam kernel (same update rule) is ~5x faster than the per-tensor loop on CPU
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    optim = torch.optim.Adam(groups, lr=c.lr, fused=fused)
    pi_optim = torch.optim.Adam(model.pi_net.parameters(), lr=c.lr, eps=c.pi_eps, fused=fused)
    return optim, pi_optim


class TDMPC2Agent(Agent):
    """TD-MPC2 acting and learning (see the module docstring)."""

    model: TDMPC2
    within_episode = True

    def __init__(
        self,
        model: TDMPC2,
        seed: int = 0,
        act: str = "mppi",
        batch_size: int = 256,
        compile: bool = False,
        compile_mode: str = "default",
        precision: str = "fp32",
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
        # the official agent's heuristic for large action spaces: 2 more MPPI iterations when the
        # action has >= 20 dims (nicklashansen/tdmpc2, tdmpc2.py)
        extra = 2 if model.action_spec.dim >= 20 else 0
        self.planner = MPPI.from_config(model.config, iterations=model.config.iterations + extra)
        self.optim, self.pi_optim = make_optimizers(model)
        self.acceleration = acc = Acceleration(compile, compile_mode, precision)
        self._wm_loss = acc.wrap(world_model_loss, model.device)
        self._pi_loss = acc.wrap(policy_loss, model.device)
        self._plan = acc.wrap(self._encode_and_plan, model.device)

    @torch.no_grad()
    def act(
        self,
        obs: Obs,
        state: State | None = None,
        *,
        explore: bool,
        is_first: Tensor | None = None,
    ) -> tuple[Tensor, State | None]:
        """Plan (or sample the prior) from the encoded observation. -> (N, A)."""
        warm = self.planner.batch_size
        if warm is not None and warm != obs_batch_size(obs):
            self.planner.reset()  # another batch of envs (e.g. evaluation): no warm start
        elif is_first is not None and warm is not None:
            self.planner.reset(is_first.bool())
        action = self._plan(obs, explore)
        return cast_floats(action, self.model.dtype), None

    def _encode_and_plan(self, obs: Obs, explore: bool) -> Tensor:
        """Encode, then plan (or sample the prior): the acting step `compile` compiles."""
        latent = self.model.encode(obs)
        if self.act_mode == "policy":
            return self.model.policy(latent, sample=explore)
        return self.planner.plan(self.model, latent, explore=explore)

    def update(self, batch: Batch) -> Metrics:
        """World-model step, then policy step on the detached latents, then target EMA."""
        model, clip = self.model, self.model.config.grad_clip_norm
        model.train()
        if self.acceleration.compile and not batch.checked:
            batch.validate_flags()  # compiled losses skip it (replay batches come checked)
        total, metrics, latents = self._wm_loss(model, batch)
        wm_params = [p for g in self.optim.param_groups for p in g["params"]]
        ok, norm = guarded_step(total, self.optim, wm_params, clip)  # ok: 0-d bool, on the device
        out: Metrics = detached(metrics)
        out.update(loss=total.detach(), grad_norm=norm)
        scale = copy_buffers(model.scale)  # the policy loss updates it before its step
        pi_loss, pi_metrics = self._pi_loss(model, latents)
        # a skipped world-model step masks the policy step and the target EMA too (no host read)
        pi_params = model.pi_net.parameters()
        pi_ok, pi_norm = guarded_step(pi_loss, self.pi_optim, pi_params, clip, enabled=ok)
        restore_buffers(model.scale, scale, pi_ok)
        out.update(detached(pi_metrics))
        out.update(pi_grad_norm=pi_norm, nonfinite=(~(ok & pi_ok)).float())
        with only_if(ok, model.target_q_params()):
            model.update_target()
        return out

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optim, "pi": self.pi_optim}

    def extra_state(self) -> dict[str, Any]:
        """The planner's state (its warm start), so a resumed run plans exactly as before."""
        return {"planner": self.planner.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        planner = state.get("planner")
        if planner is None:  # checkpoints written before the Planner protocol
            discrete = bool(self.model.action_spec.discrete)
            planner = {"prev": state.get("plan_prev"), "discrete": discrete}
        self.planner.load_state_dict(planner)

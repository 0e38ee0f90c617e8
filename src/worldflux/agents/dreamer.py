"""DreamerV3 agent: acts with the actor on the filtered State; learns the world model on replayed
sequences and the actor-critic in imagination from every posterior state of the batch.

Acting memory (the `State` returned by `act`): the RSSM posterior (``deter``, ``stoch``) plus
``prev_action`` (N, A), the action that led to the current observation. Rows whose episode just
began (``is_first``) restart from the initial state and a zero action.

Learning (`update`, the only DreamerV3 update path): a world-model step on the replayed batch,
then an actor step and a critic step on imagination from all B*T posterior states (detached),
then the slow-critic EMA. Every step goes through `guarded_step` (clip: ``wm_grad_clip`` /
``ac_grad_clip`` with Adam; none with LaProp, whose AGC clips per tensor), decided on the device.
A non-finite world-model step masks the whole update (its flag is the actor's and critic's
``enabled``; the slow critic moves only if it stepped), so nothing changes; a non-finite actor or
critic step keeps the return normaliser as it was. On CUDA the Adam optimisers are fused, so a
skipped step is skipped inside the kernel (``found_inf``). The losses are the model's
(`DreamerV3.world_model_loss`, `DreamerV3ActorCritic.imagine_loss`).

Train ratio: replayed steps per env step (DreamerV3's unit); one update replays
``batch_size * seq_len`` steps (reference: 16 x 64 and ratio 512 -> 0.5 updates per env step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
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
from worldflux.models.dreamerv3 import DreamerV3, DreamerV3ActorCritic
from worldflux.models.dreamerv3.actor_critic import ReplayContext
from worldflux.models.dreamerv3.optim import LaProp

REFERENCE_TRAIN_RATIO = 512.0


@dataclass
class DreamerV3Optimizers:
    """One optimiser per learner (paper v1: Adam, separate rates for model and actor-critic)."""

    wm: torch.optim.Optimizer
    actor: torch.optim.Optimizer
    critic: torch.optim.Optimizer


def make_optimizers(model: DreamerV3) -> DreamerV3Optimizers:
    """One optimiser each for world model, actor and critic: Adam with the paper's rates, or
    LaProp + AGC with the current official code's settings (``config.optimizer``)."""
    cfg, ac = model.config, model.actor_critic
    groups = (model.world_model_parameters(), ac.actor.parameters(), ac.critic.parameters())
    if cfg.optimizer == "laprop":
        kw = dict(lr=cfg.laprop_lr, eps=cfg.laprop_eps, agc=cfg.agc, warmup=cfg.warmup)
        return DreamerV3Optimizers(*(LaProp(g, **kw) for g in groups))
    rates = ((cfg.wm_lr, cfg.wm_eps), (cfg.ac_lr, cfg.ac_eps), (cfg.ac_lr, cfg.ac_eps))
    # fused on CUDA: skips a masked step on the device (CPU keeps the reference's per-tensor loop)
    fused = True if model.device.type == "cuda" else None
    opts = (torch.optim.Adam(g, lr, eps=eps, fused=fused)
            for g, (lr, eps) in zip(groups, rates, strict=True))  # fmt: skip
    return DreamerV3Optimizers(*opts)


def actor_critic_step(
    ac: DreamerV3ActorCritic,
    world: DreamerV3,
    start: State,
    actor_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer,
    replay: ReplayContext | None = None,
    imagine_loss: Callable[..., Any] | None = None,
    joint_backward: bool = False,
    enabled: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """One guarded actor step and one guarded critic step on imagination from `start` (N
    detached posterior states), then the slow-critic EMA. -> (both stepped: 0-d bool, metrics);
    when a step is skipped the return normaliser gets its values from before back. `enabled`
    (0-d bool, the world-model step's flag) masks both steps and the EMA. `imagine_loss`
    replaces ``ac.imagine_loss`` (the agent's compiled or autocast version of it);
    `joint_backward` takes both losses' gradients in one backward (needed when it is compiled:
    one autograd node)."""
    running = copy_buffers(ac)  # imagine_loss updates the return normaliser
    imagine = imagine_loss if imagine_loss is not None else ac.imagine_loss
    actor_loss, critic_loss, imagined = imagine(world, start, replay)
    metrics: Metrics = detached(imagined)
    clip = ac.cfg.ac_grad_clip if ac.cfg.optimizer == "adam" else math.inf  # LaProp: AGC
    flags = []
    joint = joint_backward
    if joint:
        params = [p for m in (ac.actor, ac.critic) for p in m.parameters() if p.requires_grad]
        actor_opt.zero_grad(set_to_none=True)
        critic_opt.zero_grad(set_to_none=True)
        torch.autograd.backward([actor_loss, critic_loss], inputs=params)
    for name, loss, module, optim in (
        ("actor", actor_loss, ac.actor, actor_opt),
        ("critic", critic_loss, ac.critic, critic_opt),
    ):
        stepped, norm = guarded_step(
            loss, optim, module.parameters(), clip, backward=not joint, enabled=enabled
        )
        metrics[f"ac/{name}_grad_norm"] = norm
        flags.append(stepped)
    ok = flags[0] & flags[1]
    restore_buffers(ac, running, ok)
    with only_if(enabled, ac.slow_critic.parameters()):
        ac.update_slow_critic()
    metrics["ac/actor_loss"] = actor_loss.detach()
    metrics["ac/critic_loss"] = critic_loss.detach()
    return ok, metrics


class DreamerAgent(Agent):
    """DreamerV3 acting and learning (see the module docstring)."""

    model: DreamerV3
    within_episode = False  # sequences cross episode boundaries; is_first resets the RSSM
    default_train_ratio = REFERENCE_TRAIN_RATIO  # another: the trainer's train_ratio

    def __init__(
        self,
        model: DreamerV3,
        seed: int = 0,
        batch_size: int = 16,
        seq_len: int = 64,
        compile: bool = False,
        compile_mode: str = "default",
        precision: str = "fp32",
    ) -> None:
        if not isinstance(model, DreamerV3):
            raise ConfigError(
                f"model: expected a DreamerV3 world model, got {type(model).__name__}"
            )
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: expected an int >= 1, got {value!r}")
        del seed  # weights are seeded by create_world_model; sampling uses torch's RNG
        self.model = model
        self.batch_size, self.seq_len = batch_size, seq_len
        self.opt = make_optimizers(model)
        self.acceleration = acc = Acceleration(compile, compile_mode, precision)
        if compile:  # the losses' loops run in Python over compiled steps (DreamerV3.accelerate)
            model.accelerate(lambda fn: acc.compile_region(fn, model.device))
        self._wm_loss = acc.wrap(model.world_model_loss, model.device, regional=True)
        self._imagine_loss = acc.wrap(model.actor_critic.imagine_loss, model.device, regional=True)
        self._step = acc.wrap(self._filter_and_act, model.device)

    @torch.no_grad()
    def act(
        self,
        obs: Obs,
        state: State | None = None,
        *,
        explore: bool,
        is_first: Tensor | None = None,
    ) -> tuple[Tensor, State | None]:
        """Filter the observation into the posterior, then act with the actor. -> (N, A)."""
        model = self.model
        n = obs_batch_size(obs)
        init = model.initial_state(n)
        fresh = {
            "deter": init.tensors["deter"],
            "stoch": init.tensors["stoch"],
            "prev_action": torch.zeros(n, model.action_spec.dim, device=model.device),
        }
        if state is None:
            carry = fresh
        else:
            carry = dict(state.tensors)
            if is_first is not None:  # a select per row, no device sync
                mask = is_first.to(model.device)
                carry = {k: torch.where(mask.view(-1, *([1] * (v.dim() - 1))), fresh[k], v)
                         for k, v in carry.items()}  # fmt: skip
        action, new = self._step(carry["deter"], carry["stoch"], carry["prev_action"], obs, explore)
        action, new = cast_floats((action, new), model.dtype)
        return action, State(new)

    def _filter_and_act(
        self, deter: Tensor, stoch: Tensor, prev_action: Tensor, obs: Obs, explore: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Posterior from the carried state and `obs`, then the actor's action: the acting step
        `compile` compiles. -> (action (N, A), the new carry)."""
        post = self.model.update(State({"deter": deter, "stoch": stoch}), prev_action, obs)
        action = self.model.policy(post, sample=explore)
        return action, {"deter": post["deter"], "stoch": post["stoch"], "prev_action": action}

    def update(self, batch: Batch) -> Metrics:
        """World-model step, then actor-critic steps imagined from the detached posteriors (see
        the module docstring)."""
        model, cfg = self.model, self.model.config
        model.train()
        if self.acceleration.compile and not batch.checked:
            batch.validate_flags()  # compiled losses skip it (replay batches come checked)
        loss, metrics, post = self._wm_loss(batch)
        clip = cfg.wm_grad_clip if cfg.optimizer == "adam" else math.inf  # LaProp: AGC
        ok, norm = guarded_step(loss, self.opt.wm, model.world_model_parameters(), clip)
        out: Metrics = detached(metrics)
        out["wm/grad_norm"] = norm
        start = State({k: v.detach().flatten(0, 1) for k, v in post.tensors.items()})  # (B*T, ...)
        replay = None
        if cfg.repval_scale > 0:
            feat = model.features(post).detach()  # (B, T, F)
            replay = ReplayContext(feat, batch.reward, batch.is_terminal, batch.is_last)
        ac = model.actor_critic
        ac_ok, ac_metrics = actor_critic_step(
            ac,
            model,
            start,
            self.opt.actor,
            self.opt.critic,
            replay,
            self._imagine_loss,
            joint_backward=self.acceleration.compile,
            enabled=ok,  # a skipped world-model step masks the actor-critic steps too
        )
        out.update(ac_metrics)
        out["nonfinite"] = (~(ok & ac_ok)).float()  # on the device: the trainer reads it later
        return out

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"wm": self.opt.wm, "actor": self.opt.actor, "critic": self.opt.critic}

"""DreamerV3 actor-critic, trained purely in imagination.

Recipe (paper arXiv 2301.04104 Sec. "Actor Critic Learning"; official ``agent.py::imag_loss``):
from every posterior state of a batch (detached), imagine H = 15 steps with the actor; compute
lambda-returns (lambda 0.95, gamma = 1 - 1/333) bootstrapped with the critic; normalise advantages
by max(1, S) where S is an EMA (rate 0.01) of the 5th-95th percentile range of the returns; the
actor maximises ``logpi * adv + 3e-4 * entropy`` (REINFORCE) or, for continuous actions with
``actor_grad_cont='dynamics'``, the normalised return itself (backprop through the model);
the critic is a two-hot head trained on the returns plus a regulariser toward a slow EMA copy
(rate 0.02). All losses are weighted by the cumulative predicted continuation.

Gradient isolation: imagination starts from detached states, and the actor and critic losses are
back-propagated with ``backward(inputs=...)`` restricted to the actor's and critic's parameters,
so no gradient ever reaches the world model (tested).

Use: ``ac = model.actor_critic``; ``ac.imagine_loss(model, start)`` -> (actor_loss, critic_loss,
metrics), where ``start`` is a State of N posterior states, then ``ac.update_slow_critic()``
after the steps (`worldflux.agents.dreamer.actor_critic_step` does both, with the optimisers);
``ac.act(features, sample)`` -> actions (N, A).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldflux.core.spec import ActionSpec
from worldflux.core.state import State
from worldflux.models.dreamerv3.config import DreamerV3Config
from worldflux.models.dreamerv3.networks import BinaryHead, TwoHotHead, shared_input_mlps
from worldflux.models.dreamerv3.rssm import RSSM, grad_leaf, init_linears_
from worldflux.nn.blocks import init_linear_
from worldflux.nn.distributions import categorical_entropy, sample_onehot, unimix_logp
from worldflux.nn.functional import group_one_hot, two_hot
from worldflux.nn.mlp import MLP

if TYPE_CHECKING:
    from worldflux.models.dreamerv3.model import DreamerV3

_LOG_2PI = math.log(2.0 * math.pi)


def lambda_returns(rew: Tensor, live: Tensor, val: Tensor, lam: float | Tensor) -> Tensor:
    """TD(lambda) returns along a trajectory. (N, H+1) x3 -> (N, H).

    ``rew[:, t]``/``live[:, t]`` belong to arriving at step t (index 0 is unused), ``live`` is the
    discounted continuation gamma * c_t, ``val`` the bootstrap values; `lam` is a float or a
    per-step (N, H+1) tensor (the replay loss cuts it to 0 at episode ends). Recursion:
    R_H = v_H, R_t = r_{t+1} + live_{t+1} * ((1 - lam_{t+1}) * v_{t+1} + lam_{t+1} * R_{t+1}).
    """
    H = rew.shape[1] - 1
    lam_next = lam[:, 1:] if isinstance(lam, Tensor) else torch.full_like(rew[:, 1:], lam)
    interm = rew[:, 1:] + live[:, 1:] * (1.0 - lam_next) * val[:, 1:]  # (N, H)
    carry = live[:, 1:] * lam_next
    ret = val[:, -1]
    out = []
    for t in reversed(range(H)):
        ret = interm[:, t] + carry[:, t] * ret
        out.append(ret)
    return torch.stack(out[::-1], 1)


@dataclass
class ReplayContext:
    """What the critic's replay loss reads: posterior features (B, T, F) of the training batch and
    its ``reward``, ``is_terminal``, ``is_last`` (B, T). Imagination starts are its B*T states."""

    feat: Tensor
    reward: Tensor
    is_terminal: Tensor
    is_last: Tensor


class PercentileNormalizer(nn.Module):
    """EMA of the `low`-th and `high`-th percentiles; scale = max(limit, hi - lo).

    Official ``Normalize(impl='perc')`` with rate 0.01 (paper: decay 0.99), limit 1.
    """

    q: Tensor
    lo: Tensor
    hi: Tensor

    def __init__(self, rate: float, limit: float, low: float, high: float) -> None:
        super().__init__()
        self.rate, self.limit = rate, limit
        self.register_buffer("q", torch.tensor([low / 100.0, high / 100.0]), persistent=False)
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Move the EMAs toward the percentiles of `x` (any shape)."""
        # quantile needs at least float32 (no half types); float64 stays float64
        dtype = torch.promote_types(x.dtype, torch.float32)
        lo, hi = torch.quantile(x.detach().flatten().to(dtype), self.q.to(dtype))
        self.lo.lerp_(lo.to(self.lo.dtype), self.rate)
        self.hi.lerp_(hi.to(self.hi.dtype), self.rate)

    def scale(self) -> Tensor:
        """max(limit, hi - lo), a 0-d tensor (no device sync)."""
        return (self.hi - self.lo).clamp(min=self.limit)


class Actor(nn.Module):
    """Policy on features (N, F): unimix categorical (discrete; one per group of a MultiDiscrete
    space), unimix Bernoulli per bit (MultiBinary) or bounded normal (continuous).

    Several sub-actions follow the official agent, which gives every discrete action its own
    categorical and sums their log-probs and entropies; a bit is a 2-class categorical
    (softmax of [0, logit]: a Bernoulli), its action +1 when set and -1 when clear.
    """

    def __init__(self, feat_dim: int, spec: ActionSpec, cfg: DreamerV3Config) -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        out = spec.dim if spec.discrete or spec.binary else 2 * spec.dim
        self.net = init_linears_(MLP(feat_dim, cfg.units, out, cfg.ac_layers, cfg.norm, cfg.act))
        init_linear_(self.net.head, 0.01)  # type: ignore[arg-type]  # official outscale 0.01

    def params(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """Discrete: (log-probs (..., A), empty); binary: (log-probs (..., A, 2) of clear and
        set, empty); continuous: (mean, std) each (..., A)."""
        x = self.net(feat)
        if self.spec.binary:
            logits = torch.stack([torch.zeros_like(x), x], -1)  # (..., A) -> (..., A, 2)
            return unimix_logp(logits, self.cfg.unimix), x.new_empty(0)
        if self.spec.multi_discrete:
            groups = x.split(self.spec.groups, -1)
            return torch.cat([unimix_logp(g, self.cfg.unimix) for g in groups], -1), x.new_empty(0)
        if self.spec.discrete:
            return unimix_logp(x, self.cfg.unimix), x.new_empty(0)
        mean, std = x.chunk(2, -1)
        lo, hi = self.cfg.actor_minstd, self.cfg.actor_maxstd
        return torch.tanh(mean), (hi - lo) * torch.sigmoid(std + 2.0) + lo

    def sample(self, feat: Tensor, reparam: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """-> action (..., A), log-prob of it (...), entropy (...). The action is detached
        unless `reparam` (continuous rsample for dynamics backprop)."""
        a, b = self.params(feat)
        if self.spec.binary:
            onehot = sample_onehot(a.detach())  # (..., A, 2)
            logp = (onehot * a).sum((-2, -1))
            return onehot[..., 1] * 2 - 1, logp, categorical_entropy(a).sum(-1)
        if self.spec.multi_discrete:
            groups = a.split(self.spec.groups, -1)
            action = torch.cat([sample_onehot(g.detach()) for g in groups], -1)
            ent = torch.stack([categorical_entropy(g) for g in groups], -1).sum(-1)
            return action, (action * a).sum(-1), ent
        if self.spec.discrete:
            action = sample_onehot(a.detach())
            return action, (action * a).sum(-1), categorical_entropy(a)
        noise = torch.randn_like(a)
        action = a + b * noise if reparam else (a + b * noise).detach()
        logp = -0.5 * ((action.detach() - a) / b).pow(2) - b.log() - 0.5 * _LOG_2PI
        ent = (0.5 + 0.5 * _LOG_2PI + b.log()).sum(-1)
        return action, logp.sum(-1), ent

    def mode(self, feat: Tensor) -> Tensor:
        """Most likely action (..., A): one-hot argmax (per group), +-1 bits, or the mean."""
        a, _ = self.params(feat)
        if self.spec.binary:
            return (a[..., 1] > a[..., 0]).to(a.dtype) * 2 - 1
        if self.spec.discrete:
            return group_one_hot(a, tuple(self.spec.groups))
        return a


class DreamerV3ActorCritic(nn.Module):
    """Actor, critic, slow critic and return normaliser (see the module docstring)."""

    def __init__(self, cfg: DreamerV3Config, feat_dim: int, spec: ActionSpec) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.actor = Actor(feat_dim, spec, cfg)
        self.critic = TwoHotHead(feat_dim, cfg, cfg.ac_layers)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.retnorm = PercentileNormalizer(
            cfg.retnorm_rate, cfg.retnorm_limit, cfg.retnorm_low, cfg.retnorm_high
        )
        self.compiled = False  # set by `compile_regions`

    def act(self, feat: Tensor, sample: bool = True) -> Tensor:
        """Environment action (N, A): one-hot, or continuous clipped to [-1, 1]."""
        action = self.actor.sample(feat)[0] if sample else self.actor.mode(feat)
        return action if self.spec.discrete else action.clamp(-1.0, 1.0)

    @property
    def dynamics_grad(self) -> bool:
        """Whether the actor learns by backprop through the model (continuous + 'dynamics')."""
        continuous = not (self.spec.discrete or self.spec.binary)
        return continuous and self.cfg.actor_grad_cont == "dynamics"

    def imagine(self, wm: DreamerV3, start: State) -> dict[str, Tensor]:
        """Roll the actor out for H steps from `start` (N states, detached).

        -> feat (N, H+1, F), logp (N, H), ent (N, H). The model runs without autograd unless
        `dynamics_grad`; the actor always builds its graph.
        """
        deter = start.tensors["deter"].detach()
        stoch = start.tensors["stoch"].detach().flatten(1)  # (N, S, C) -> (N, S*C)
        if self.compiled and self.dynamics_grad and torch.is_grad_enabled():
            deter, stoch = grad_leaf(deter), grad_leaf(stoch)  # one compiled step for all H
        feats, logps, ents = [torch.cat([deter, stoch], -1)], [], []
        for _ in range(self.cfg.imag_horizon):
            deter, stoch, feat, logp, ent = self.imagine_step(wm.rssm, deter, stoch, feats[-1])
            feats.append(feat)
            logps.append(logp)
            ents.append(ent)
        return {
            "feat": torch.stack(feats, 1),  # (H+1) x (N, F) -> (N, H+1, F)
            "logp": torch.stack(logps, 1),
            "ent": torch.stack(ents, 1),
        }

    def imagine_step(
        self, rssm: RSSM, deter: Tensor, stoch: Tensor, feat: Tensor
    ) -> tuple[Tensor, ...]:
        """One step of `imagine`: act on `feat` (N, F), then the prior step. -> deter (N, D),
        stoch (N, S*C), next feat (N, F), the action's log-prob (N,) and entropy (N,)."""
        action, logp, ent = self.actor.sample(feat, reparam=self.dynamics_grad)
        with torch.set_grad_enabled(self.dynamics_grad and torch.is_grad_enabled()):
            deter, stoch, _ = rssm.img_step(deter, stoch, action)
            feat = torch.cat([deter, stoch], -1)
        return deter, stoch, feat, logp, ent

    def compile_regions(self, compile_fn: Callable[[Any], Any]) -> None:
        """Route `imagine_loss`'s regions through `compile_fn` (e.g. `torch.compile`): the
        imagination step, compiled once and called H times, and the losses on the trajectory.
        Each compiled region replaces its method on this instance only."""
        self.compiled = True
        for name in ("imagine_step", "trajectory_loss"):
            setattr(self, name, compile_fn(getattr(self, name)))

    def imagine_loss(
        self, wm: DreamerV3, start: State, replay: ReplayContext | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Actor and critic losses (scalars) from imagination out of `start`, and metrics.

        With `replay` (and ``repval_scale > 0``) the critic loss adds the replay loss.
        """
        return self.trajectory_loss(wm, self.imagine(wm, start), replay)

    def trajectory_loss(
        self, wm: DreamerV3, traj: dict[str, Tensor], replay: ReplayContext | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """`imagine_loss` on an `imagine` trajectory: heads, lambda-returns, the losses."""
        cfg = self.cfg
        feat = traj["feat"]
        disc = 1.0 if cfg.cont_discount_target else cfg.gamma
        # Every head reads the whole contiguous (N, H+1, F) block (slicing it first would copy);
        # step 0's reward and step H's critic loss are unused (weight 0).
        logits = self.critic(feat.detach())  # (N, H+1, K), the critic's only forward pass
        with torch.set_grad_enabled(self.dynamics_grad and torch.is_grad_enabled()):
            rew_logits, con_logit, slow_logits = self._heads(wm, feat)
            rew = wm.reward_head.mean(rew_logits)  # (N, H+1) arriving rewards
            live = torch.sigmoid(con_logit) * disc
            critic = self.critic if self.dynamics_grad else None
            val = self.critic.mean(critic(feat) if critic is not None else logits.detach())
            ret = lambda_returns(rew, live, val, cfg.lam)  # (N, H)
        tarval = val.detach()
        with torch.no_grad():
            weight = torch.cumprod(live, 1)[:, :-1] / disc  # (N, H)
            slow = self.slow_critic.mean(slow_logits.detach())  # (N, H+1)
            self.retnorm.update(ret)
            scale = self.retnorm.scale()
        ent = traj["ent"]
        if self.dynamics_grad:
            objective = ret / scale
        else:
            adv = (ret.detach() - tarval[:, :-1]) / scale
            objective = traj["logp"] * adv
        actor_loss = -(weight * (objective + cfg.actor_entropy * ent)).mean()
        critic_loss = self._critic_loss(logits, ret.detach(), slow, weight)
        if replay is not None and cfg.repval_scale > 0:
            boot = ret[:, 0].detach().view(replay.reward.shape)  # (B*T,) -> (B, T)
            critic_loss = critic_loss + cfg.repval_scale * self.replay_loss(replay, boot)
        metrics = {
            "ac/return": ret.detach().mean(),
            "ac/return_scale": scale,
            "ac/value": tarval.mean(),
            "ac/entropy": ent.detach().mean(),
            "ac/imag_reward": rew.detach().mean(),
            "ac/weight": weight.mean(),
        }
        return actor_loss, critic_loss, metrics

    def _critic_loss(self, logits: Tensor, ret: Tensor, slow: Tensor, weight: Tensor) -> Tensor:
        """Weighted two-hot CE toward the returns `ret` (N, H) plus the slow-critic regulariser
        toward `slow` (N, H+1); `logits` (N, H+1, K) cover step H too, which is weighted 0."""
        bins = self.critic.bins
        # one target distribution for both terms: weight * (twohot(ret) + reg * twohot(slow))
        with torch.no_grad():
            dist = two_hot(F.pad(ret, (0, 1)), bins)  # (N, H+1, K); step H gets weight 0 below
            dist.add_(two_hot(slow, bins), alpha=self.cfg.slow_critic_reg)
            dist.mul_(F.pad(weight, (0, 1)).unsqueeze(-1))
        return -(dist * F.log_softmax(logits, -1)).sum() / weight.numel()  # mean over N x H

    def _heads(self, wm: DreamerV3, feat: Tensor) -> list[Tensor]:
        """Reward logits, continue logit, slow-critic logits on `feat` (N, H+1, F); with the
        model's own heads their first layers share one matmul."""
        if isinstance(wm.reward_head, TwoHotHead) and isinstance(wm.continue_head, BinaryHead):
            nets = (wm.reward_head.net, wm.continue_head.net, self.slow_critic.net)
            rew, con, slow = shared_input_mlps(feat, nets)
            return [rew, con.squeeze(-1), slow]
        return [wm.reward_head(feat), wm.continue_head(feat), self.slow_critic(feat)]

    def replay_loss(self, replay: ReplayContext, boot: Tensor) -> Tensor:
        """Critic loss on the replayed sequence (official ``repl_loss``): lambda-returns over the
        real rewards, discount gamma * (1 - is_terminal), lambda cut at ``is_last``, bootstrapped
        with the imagination returns `boot` (B, T); features detached. -> scalar."""
        cfg, dt = self.cfg, boot.dtype
        live = (~replay.is_terminal).to(dt) * cfg.gamma
        lam = (~replay.is_last).to(dt) * cfg.lam
        ret = lambda_returns(replay.reward.to(dt), live, boot, lam)  # (B, T-1)
        feat = replay.feat[:, :-1].detach()
        logits = self.critic(feat)
        with torch.no_grad():
            slow = self.slow_critic.mean(self.slow_critic(feat))
        loss = self.critic.loss(logits, ret) + cfg.slow_critic_reg * self.critic.loss(logits, slow)
        return ((~replay.is_last[:, :-1]).to(dt) * loss).mean()

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        """slow <- (1 - rate) * slow + rate * critic."""
        slow: list[Tensor] = list(self.slow_critic.parameters())
        fast: list[Tensor] = list(self.critic.parameters())
        torch._foreach_lerp_(slow, fast, self.cfg.slow_critic_rate)

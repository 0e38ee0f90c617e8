"""TD-MPC2: an implicit (decoder-free) world model with a Q ensemble and a policy prior.

The class has two layers:

1. **Latent maths** (tensors in, tensors out), one method per component of the paper and of the
   official ``world_model.py``: `embed` (encode), `next_latent` (next), `reward_logits`
   (reward), `termination_logit` (termination), `pi`, `q_logits` / `q` (Q), plus `to_scalar`
   (two-hot logits -> value) and `update_target` (the target-Q EMA). The losses built from
   them are in `worldflux.models.tdmpc2.losses`; the optimisers and the update in
   `worldflux.agents.tdmpc2.TDMPC2Agent`.
2. **State adapter**: the `WorldModel` contract on `State`s (see `worldflux.core.model`) and the
   two extra methods MPPI needs (`worldflux.planners.base.PlanningModel`: `policy`, `value`),
   each a validated call of the latent maths.

Contract mapping:

- State: one tensor, ``latent`` (B, latent_dim), the SimNorm embedding (groups of 8 sum to 1).
- TD-MPC2 is NOT recurrent: `update(state, action, obs)` ignores `state` and `action` (they are
  validated) and re-encodes `obs`. `initial_state` is the uniform point of the simplex.
- Reward and Q need an action: `decode(state, heads, action=None)` evaluates them at `action`
  when given, else at the policy's deterministic action (its ``action`` head). `imagine_step`
  is overridden so `rollout` rewards are r(z_t, a_t), the reward of the transition taken.
- ``continue`` is 1 - P(terminated | z) for episodic configs, and 1 otherwise.
- Actions: Box values in [-1, 1] (a squashed Gaussian prior); Discrete and MultiDiscrete
  one-hots, one categorical per group (``action_spec.groups``) in the prior and in MPPI;
  MultiBinary bits planned as continuous values (the env sets a bit where > 0).
- `loss(batch)` is the world-model loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

from worldflux.core.batch import Batch
from worldflux.core.exceptions import SpecError, StateError
from worldflux.core.model import Metrics, WorldModel
from worldflux.core.spec import ActionSpec, Obs, ObsSpec, same_device
from worldflux.core.state import State
from worldflux.models.tdmpc2 import losses
from worldflux.models.tdmpc2.config import TDMPC2Config
from worldflux.models.tdmpc2.networks import (
    Encoder,
    RunningScale,
    SimNorm,
    categorical,
    init_linear,
    mlp,
    squashed_gaussian,
)
from worldflux.nn.ensemble import EnsembleMLP
from worldflux.nn.functional import group_one_hot, symexp, two_hot_mean

QReduce = Literal["min_of_two_random", "mean_of_two_random", "mean_of_all", "per_member"]
Q_REDUCE: tuple[str, ...] = get_args(QReduce)


class TDMPC2(WorldModel):
    """TD-MPC2 (Hansen et al., ICLR 2024) behind the `WorldModel` contract."""

    family = "tdmpc2"
    bins: Tensor  # (K,) two-hot grid in symlog space

    def __init__(self, config: TDMPC2Config, obs_spec: ObsSpec, action_spec: ActionSpec) -> None:
        if not isinstance(config, TDMPC2Config):
            raise SpecError(f"config: expected TDMPC2Config, got {type(config).__name__}")
        super().__init__(config, obs_spec, action_spec)
        c, a = config, action_spec.dim
        self.heads = ("reward", "q", "action", "continue")
        self.discrete = action_spec.discrete
        hid = 2 * [c.mlp_dim]
        self.encoder = Encoder(obs_spec, c.enc_dim, c.num_enc_layers, c.latent_dim,
                               c.simnorm_dim, c.num_channels, c.shift_pad)  # fmt: skip
        self.dynamics = mlp(c.latent_dim + a, hid, c.latent_dim, final=SimNorm(c.simnorm_dim))
        self.reward_net = mlp(c.latent_dim + a, hid, c.num_bins)
        self.termination_net = mlp(c.latent_dim, hid, 1) if c.episodic else None
        self.pi_net = mlp(c.latent_dim, hid, a if self.discrete else 2 * a)
        self.apply(init_linear)
        torch.nn.init.zeros_(self.reward_net[-1].weight)
        self.qs = EnsembleMLP(c.num_q, c.latent_dim + a, hid, c.num_bins, "mish", c.dropout,
                              zero_last=True)  # fmt: skip
        for i, p in enumerate(self.qs.param_list()):  # EMA targets: buffers, never trained
            self.register_buffer(f"target_q{i}", p.detach().clone())
        self.scale = RunningScale(c.tau)
        self.register_buffer("bins", torch.linspace(c.vmin, c.vmax, c.num_bins), persistent=False)
        self.discount = c.discount

    # --- latent maths (tensors in, tensors out) ------------------------------------------------

    def embed(self, obs: dict[str, Tensor], batch_dims: int = 1) -> Tensor:
        """Checked obs dict (see `check_obs`) with `batch_dims` leading dims -> z (*lead, L)."""
        first = next(iter(obs.values()))
        lead = first.shape[:batch_dims]
        flat = {k: v.reshape(-1, *v.shape[batch_dims:]) for k, v in obs.items()}  # (N, ...)
        return self.encoder(flat).reshape(*lead, -1)  # (N, L) -> (*lead, L)

    def next_latent(self, z: Tensor, a: Tensor) -> Tensor:
        """Latent dynamics. (..., L), (..., A) -> (..., L)."""
        return self.dynamics(torch.cat([z, a], -1))

    def reward_logits(self, z: Tensor, a: Tensor) -> Tensor:
        """(..., L), (..., A) -> (..., K) two-hot logits of symlog reward (see `to_scalar`)."""
        return self.reward_net(torch.cat([z, a], -1))

    def termination_logit(self, z: Tensor) -> Tensor | None:
        """(..., L) -> (...) logit of termination, or None for non-episodic configs."""
        return None if self.termination_net is None else self.termination_net(z).squeeze(-1)

    def pi(self, z: Tensor, sample: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """Policy prior. (..., L) -> action (..., A), a sample or (not `sample`) the mean, and
        info (mean, entropy, scaled_entropy, ...). Discrete actions are one-hot per group of the
        action spec (one categorical each) and carry a straight-through gradient."""
        out = self.pi_net(z)
        if self.discrete:
            return categorical(out, sample, self.action_spec.groups)
        return squashed_gaussian(out, self.config.log_std_min, self.config.log_std_max, sample)

    def q_logits(self, z: Tensor, a: Tensor) -> Tensor:
        """(..., L), (..., A) -> (E, ..., K) two-hot logits of every Q member (the value loss)."""
        return self.qs(torch.cat([z, a], -1))

    def q(self, z: Tensor, a: Tensor, *, reduce: QReduce, target: bool = False,
          detach: bool = False, dropout: bool | None = None) -> Tensor:  # fmt: skip
        """Q(z, a) as values. (..., L), (..., A) -> (...), or (E, ...) for ``per_member``.

        `reduce`: ``min_of_two_random`` / ``mean_of_two_random`` of two members drawn at random
        (both when num_q == 2; official 'min' / 'avg'), ``mean_of_all`` members, or
        ``per_member`` (no reduction). `target` uses the EMA weights (never dropout); `detach`
        uses the live weights cut from autograd (no gradient reaches the Q parameters, the
        gradient w.r.t. z and a still flows); `dropout` overrides the module's train/eval mode
        for the first-layer dropout.
        """
        if reduce not in Q_REDUCE:
            raise SpecError(f"reduce: expected one of {Q_REDUCE}, got {reduce!r}")
        params: Sequence[Tensor] | None = None
        if target:
            params = self.target_q_params()
        elif detach:
            params = [p.detach() for p in self.qs.param_list()]
        members = None
        two = reduce in ("min_of_two_random", "mean_of_two_random")
        if two and self.config.num_q > 2:  # with 2 members: both
            members = torch.randperm(self.config.num_q, device=z.device)[:2]
        training = False if target else dropout
        q = self.to_scalar(self.qs(torch.cat([z, a], -1), params, members, training))
        if reduce == "min_of_two_random":
            return q.min(0).values
        return q if reduce == "per_member" else q.mean(0)

    def to_scalar(self, logits: Tensor) -> Tensor:
        """Two-hot logits (..., K) -> value (...) in real space."""
        return symexp(two_hot_mean(logits, self.bins))

    def target_q_params(self) -> list[Tensor]:
        """The EMA copies of the Q ensemble's parameters (buffers ``target_q*``)."""
        return [getattr(self, f"target_q{i}") for i in range(len(self.qs.param_list()))]

    @torch.no_grad()
    def update_target(self) -> None:
        """Target-Q EMA: target <- target + tau * (online - target)."""
        online = [p.detach() for p in self.qs.param_list()]
        torch._foreach_lerp_(self.target_q_params(), online, self.config.tau)

    # --- State adapter: the WorldModel contract and the PlanningModel methods ------------------

    def _latent(self, state: State, arg: str = "state") -> Tensor:
        if not isinstance(state, State):
            raise StateError(f"{arg}: expected a State, got {type(state).__name__}")
        z = state.get("latent")
        if z is None or z.dim() != 2 or z.shape[-1] != self.config.latent_dim:
            got = None if z is None else tuple(z.shape)
            raise StateError(
                f"{arg}: expected tensor 'latent' of shape (B, {self.config.latent_dim}), "
                f"got {got} (keys {sorted(state.tensors)})"
            )
        dev = self.bins.device
        if z.device != dev and not same_device(z.device, dev):
            raise StateError(
                f"{arg}['latent']: expected a tensor on the model's device {dev}, got {z.device}"
            )
        return z

    def _action(self, action: Tensor, z: Tensor, arg: str = "action") -> Tensor:
        a = self.action_spec.to_model(action, 1, arg, z.device, z.dtype)  # z: checked State
        if a.shape[0] != z.shape[0]:
            raise SpecError(
                f"{arg}: expected batch size {z.shape[0]} (the state's), got {a.shape[0]}"
            )
        return a

    def initial_state(self, batch_size: int) -> State:
        """The uniform SimNorm latent (every group at 1/simnorm_dim). -> latent (B, L)."""
        c, batch_size = self.config, self.check_batch_size(batch_size)
        z = self.bins.new_full((batch_size, c.latent_dim), 1.0 / c.simnorm_dim)
        return State({"latent": z})

    def encode(self, obs: Obs) -> State:
        """obs (B, ...) -> State latent (B, L)."""
        return State({"latent": self.embed(self.check_obs(obs))})

    def update(self, state: State, action: Tensor, obs: Obs) -> State:
        """Not recurrent: re-encodes `obs`; `state` and `action` are only validated (batch
        sizes must agree)."""
        z = self._latent(state)
        self._action(action, z)
        return State({"latent": self.embed(self.check_obs(obs, z.shape[0]))})

    def transition(self, state: State, action: Tensor) -> State:
        """Latent dynamics: z' = d(z, a). -> latent (B, L)."""
        z = self._latent(state)
        return State({"latent": self.next_latent(z, self._action(action, z))})

    def features(self, state: State) -> Tensor:
        return self._latent(state)

    def decode(self, state: State, heads: Sequence[str] | None = None,
               action: Tensor | None = None) -> dict[str, Tensor]:  # fmt: skip
        """reward (B,), q (B,) mean of all Qs (no dropout, also in train mode), action (B, A)
        policy mean, continue (B,).

        reward and q are evaluated at `action` if given, else at the policy's mean action.
        """
        wanted = self.check_heads(heads)
        z = self._latent(state)
        out: dict[str, Tensor] = {}
        mean = None
        if action is None or "action" in wanted:
            mean = self.pi(z, sample=False)[1]["mean"]  # deterministic policy action
        a = mean if action is None else self._action(action, z)
        assert a is not None
        if "action" in wanted and mean is not None:
            out["action"] = mean
        if "reward" in wanted:
            out["reward"] = self.to_scalar(self.reward_logits(z, a))
        if "q" in wanted:
            out["q"] = self.q(z, a, reduce="mean_of_all", dropout=False)  # deterministic
        if "continue" in wanted:
            out["continue"] = self._continue(z)
        return out

    def _continue(self, z: Tensor) -> Tensor:
        logit = self.termination_logit(z)
        return z.new_ones(z.shape[:-1]) if logit is None else 1 - logit.sigmoid()

    def imagine_step(self, state: State, action: Tensor) -> tuple[State, dict[str, Tensor]]:
        """r(z_t, a_t) (B,), z_{t+1}, and continue of z_{t+1} (B,)."""
        z = self._latent(state)
        a = self._action(action, z)
        za = torch.cat([z, a], -1)  # shared by dynamics and reward
        nz = self.dynamics(za)
        preds = {"reward": self.to_scalar(self.reward_net(za)), "continue": self._continue(nz)}
        return State({"latent": nz}), preds

    def policy(self, state: State, sample: bool = True) -> Tensor:
        """Policy-prior action (B, A): a sample, or the mean. Discrete: exact one-hots (one per
        group)."""
        z = self._latent(state)
        action, info = self.pi(z, sample)
        if not sample:
            return info["mean"]
        if self.discrete:  # exact one-hots, without the straight-through term
            return group_one_hot(action, self.action_spec.groups)
        return action

    def value(self, state: State, action: Tensor) -> Tensor:
        """Planning value: Q ``mean_of_two_random`` (the official 'avg'), no dropout. -> (B,)."""
        z = self._latent(state)
        return self.q(z, self._action(action, z), reduce="mean_of_two_random", dropout=False)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        """World-model loss (consistency, reward, value, termination) on a (B, H+1) window."""
        total, metrics, _ = losses.world_model_loss(self, batch)
        out: Metrics = {**metrics}
        return total, out

    def extra_repr(self) -> str:
        return f"discount={self.discount:.4f}, discrete={self.discrete}"

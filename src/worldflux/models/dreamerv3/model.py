"""`DreamerV3`: the world model (encoder, RSSM, decoder, reward and continue heads) plus its
actor-critic, behind the `WorldModel` contract.

State keys (tensors batch-first):
- after `encode`/`update`: exactly ``deter`` (B, D), ``stoch`` (B, S, C) one-hot sample of the
  posterior, ``prior_logits`` and ``posterior_logits`` (B, S, C) unimix log-probabilities;
- after `transition` (imagination) and in `rollout` trajectories: ``deter``, ``stoch`` (a prior
  sample) and ``prior_logits``; there is no posterior without an observation;
- `initial_state`: zeros for ``deter``/``stoch`` and uniform ``prior_logits``.

`loss(batch)` is the world-model loss only. The actor-critic lives in ``model.actor_critic``
(`DreamerV3ActorCritic`, whose `imagine_loss` gives the actor and critic losses); `policy` acts.
The optimisers and the update are `worldflux.agents.dreamer.DreamerAgent`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from worldflux.core.batch import Batch
from worldflux.core.exceptions import StateError
from worldflux.core.model import Metrics, Policy, WorldModel
from worldflux.core.spec import ActionSpec, Obs, ObsSpec
from worldflux.core.state import State
from worldflux.core.trajectory import Trajectory
from worldflux.models.dreamerv3.actor_critic import DreamerV3ActorCritic
from worldflux.models.dreamerv3.config import DreamerV3Config
from worldflux.models.dreamerv3.networks import BinaryHead, Decoder, Encoder, TwoHotHead
from worldflux.models.dreamerv3.rssm import RSSM
from worldflux.nn.blocks import set_norm_eps_

_CARRY_KEYS = ("deter", "stoch")  # what filtering and imagination read
_PRIOR_KEYS = ("deter", "stoch", "prior_logits")  # what every rollout State holds


class DreamerV3(WorldModel):
    """DreamerV3 (Hafner et al. 2023, arXiv 2301.04104); choices documented in README.md."""

    family = "dreamerv3"
    heads = ("obs", "reward", "continue")

    def __init__(self, config: DreamerV3Config, obs_spec: ObsSpec, action_spec: ActionSpec):
        super().__init__(config, obs_spec, action_spec)
        cfg = config
        self.encoder = Encoder(obs_spec, cfg)
        self.rssm = RSSM(cfg, action_spec.dim, self.encoder.out_dim)
        self.feat_dim = cfg.deter + cfg.stoch * cfg.classes
        self.decoder = Decoder(obs_spec, cfg)
        self.reward_head = TwoHotHead(self.feat_dim, cfg, cfg.head_layers)
        self.continue_head = BinaryHead(self.feat_dim, cfg, cfg.head_layers)
        self.actor_critic = DreamerV3ActorCritic(cfg, self.feat_dim, action_spec)
        set_norm_eps_(self, cfg.norm_eps)  # every norm layer, as one setting

    # --- contract -----------------------------------------------------------------------------

    def initial_state(self, batch_size: int) -> State:
        """Zero ``deter`` (B, D), ``stoch`` (B, S, C) and uniform ``prior_logits`` (B, S, C)."""
        cfg, dev = self.config, self.device
        batch_size = self.check_batch_size(batch_size)
        deter, stoch = self.rssm.initial(batch_size, dev)
        shape = (batch_size, cfg.stoch, cfg.classes)
        uniform = torch.full(shape, -math.log(cfg.classes), device=dev, dtype=self.dtype)
        return State({"deter": deter, "stoch": stoch.view(shape), "prior_logits": uniform})

    def encode(self, obs: Obs) -> State:
        """Posterior for a first observation (B, ...) from the zero state and a zero action."""
        obs_d = self.check_obs(obs)
        B = next(iter(obs_d.values())).shape[0]
        action = torch.zeros(B, self.action_spec.dim, device=self.device, dtype=self.dtype)
        return self._filter(self.initial_state(B), action, obs_d)

    def update(self, state: State, action: Tensor, obs: Obs) -> State:
        """Posterior after taking `action` (B, A) (or (B,) indices) in `state`, seeing `obs`."""
        B = self.check_state(state, _CARRY_KEYS)
        action = self.check_action(action, B)
        return self._filter(state, action, self.check_obs(obs, B))

    def _filter(self, state: State, action: Tensor, obs: dict[str, Tensor]) -> State:
        deter, stoch = self._carry(state)
        deter, stoch, post = self.rssm.obs_step(deter, stoch, action, self.encoder(obs))
        return self._state(deter, stoch, self.rssm.prior_logp(deter), post)

    def transition(self, state: State, action: Tensor) -> State:
        """Prior step (imagination): keys ``deter``, ``stoch`` (prior sample), ``prior_logits``."""
        action = self.check_action(action, self.check_state(state, _CARRY_KEYS))
        deter, stoch, prior = self.rssm.img_step(*self._carry(state), action)
        return self._state(deter, stoch, prior)

    def decode(self, state: State, heads: Sequence[str] | None = None) -> dict[str, Tensor]:
        """``obs`` (B, *obs_shape) (dict specs: ``obs/<key>``; images float in [0, 1]),
        ``reward`` (B,) two-hot mean, ``continue`` (B,) probability."""
        wanted = self.check_heads(heads)
        out: dict[str, Tensor] = {}
        feat = self.features(state)
        if "obs" in wanted:
            deter, stoch = self._carry(state)
            recon = self.decoder(deter, stoch)
            if self.obs_spec.is_dict:
                out.update({f"obs/{k}": v for k, v in recon.items()})
            else:
                out["obs"] = next(iter(recon.values()))
        if "reward" in wanted:
            out["reward"] = self.reward_head.mean(self.reward_head(feat))
        if "continue" in wanted:
            out["continue"] = torch.sigmoid(self.continue_head(feat))
        return out

    def features(self, state: State) -> Tensor:
        """[deter, flat stoch] (B, D + S*C)."""
        deter, stoch = self._carry(state)
        return torch.cat([deter, stoch], -1)

    def rollout(
        self,
        state: State,
        actions: Tensor | None = None,
        policy: Policy | None = None,
        horizon: int | None = None,
    ) -> Trajectory:
        """`WorldModel.rollout`; the start State is reduced to the prior keys so that every
        State of the trajectory has ``deter``, ``stoch``, ``prior_logits``."""
        self.check_state(state, _PRIOR_KEYS)
        start = State({k: state.tensors[k] for k in _PRIOR_KEYS}, dict(state.meta))
        return super().rollout(start, actions=actions, policy=policy, horizon=horizon)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        """World-model loss on a (B, T) batch (see `world_model_loss`)."""
        loss, metrics, _ = self.world_model_loss(batch)
        return loss, metrics

    # --- training -----------------------------------------------------------------------------

    def observe(self, batch: Batch) -> dict[str, Tensor]:
        """Posterior pass over `batch`: `RSSM.observe` outputs, each (B, T, ...)."""
        return self._observe(batch)[0]

    def _observe(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Validated posterior pass: (RSSM outputs, the observations as a dict)."""
        batch.validate_in_loss(self.device)
        obs = self.check_obs(batch.obs, arg="batch.obs", batch_dims=2)
        action = self.check_action(batch.action, arg="batch.action", batch_dims=2)
        return self.rssm.observe(self.encode_sequence(obs), action, batch.is_first), obs

    def encode_sequence(self, obs: dict[str, Tensor]) -> Tensor:
        """Tokens of a (B, T) sequence of observations: (B, T, ...) -> (B, T, E)."""
        return self.encoder(obs)

    def world_model_loss(self, batch: Batch) -> tuple[Tensor, Metrics, State]:
        """-> scalar loss, detached metrics, posterior State (B, T, ...) (graph attached).

        Per step: reconstruction + reward two-hot CE + continue BCE (target 1 - is_terminal,
        times gamma if ``cont_discount_target``) + beta_dyn * dyn + beta_rep * rep (free bits).
        """
        post, obs = self._observe(batch)
        return self.sequence_loss(post, obs, batch)

    def sequence_loss(
        self, post: dict[str, Tensor], obs: dict[str, Tensor], batch: Batch
    ) -> tuple[Tensor, Metrics, State]:
        """`world_model_loss` given the posterior pass `post` over `batch` (and its `obs`)."""
        cfg = self.config
        deter, stoch = post["deter"], post["stoch"].flatten(-2)  # (B, T, S, C) -> (B, T, S*C)
        feat = torch.cat([deter, stoch], -1)
        cont = (~batch.is_terminal).to(feat.dtype)
        if cfg.cont_discount_target:
            cont = cont * cfg.gamma
        kl = self.rssm.kl_losses(post["post_logp"], post["prior_logp"])
        losses = {
            "rec": self.decoder.loss(deter, stoch, obs),
            "rew": self.reward_head.loss(self.reward_head(feat), batch.reward.to(feat.dtype)),
            "con": self.continue_head.loss(self.continue_head(feat), cont),
            "dyn": kl["dyn"],
            "rep": kl["rep"],
        }
        scales = {
            "rec": cfg.rec_scale,
            "rew": cfg.rew_scale,
            "con": cfg.con_scale,
            "dyn": cfg.kl_dyn_scale,
            "rep": cfg.kl_rep_scale,
        }
        assert losses.keys() == scales.keys(), (sorted(losses), sorted(scales))
        means = {k: v.mean() for k, v in losses.items()}
        loss = sum(scales[k] * v for k, v in means.items())
        metrics: Metrics = {f"loss/{k}": v.detach() for k, v in means.items()}
        metrics["kl"] = kl["kl"].mean()
        state = self._state(deter, stoch, post["prior_logp"], post["post_logp"])
        return loss, metrics, state

    def accelerate(self, compile_fn: Callable[[Any], Any]) -> None:
        """Compile the update's regions with `compile_fn` (`torch.compile` with the agent's mode).

        Regional compilation: the loops of `world_model_loss` (T filtering steps) and of
        `imagine_loss` (H imagination steps) stay in Python and call their step compiled once,
        instead of one graph of T (H) unrolled copies, whose inductor build takes minutes. The
        batched parts around the loops are regions too: the encoder over B x T, the RSSM's
        per-sequence inputs, the losses on the posterior sequence and on the imagined
        trajectory (six regions, each compiled once per batch shape; autograd chains them).
        The acting step (`update`, `policy`) is untouched: the agent compiles it whole.
        """
        for name in ("encode_sequence", "sequence_loss"):
            setattr(self, name, compile_fn(getattr(self, name)))
        self.rssm.compile_regions(compile_fn)
        self.actor_critic.compile_regions(compile_fn)

    def world_model_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the actor-critic's."""
        return [p for n, p in self.named_parameters() if not n.startswith("actor_critic.")]

    def policy(self, state: State, sample: bool = True) -> Tensor:
        """Action (B, A) for the environment from the actor reading `features(state)`."""
        return self.actor_critic.act(self.features(state), sample)

    # --- helpers ------------------------------------------------------------------------------

    def _carry(self, state: State) -> tuple[Tensor, Tensor]:
        """deter (..., D) and flat stoch (..., S*C) of `state`; `StateError` if either is
        missing or misshapen."""
        if not isinstance(state, State):
            raise StateError(f"state: expected a State, got {type(state).__name__}")
        tensors, cfg = state.tensors, self.config
        deter, stoch = tensors.get("deter"), tensors.get("stoch")
        if deter is None or stoch is None:
            missing = [k for k in _CARRY_KEYS if k not in tensors]
            raise StateError(
                f"state: a DreamerV3 State needs keys {list(_CARRY_KEYS)}, missing {missing}; "
                f"got {sorted(tensors)}"
            )
        lead = deter.shape[:-1]
        if (
            deter.dim() < 2
            or deter.shape[-1] != cfg.deter
            or stoch.shape[-2:] != (cfg.stoch, cfg.classes)
            or stoch.shape[:-2] != lead
        ):
            raise StateError(
                f"state: expected 'deter' (B, {cfg.deter}) and 'stoch' (B, {cfg.stoch}, "
                f"{cfg.classes}), got {tuple(deter.shape)} and {tuple(stoch.shape)}"
            )
        return deter, stoch.flatten(-2)

    def _state(self, deter: Tensor, stoch: Tensor, prior: Tensor, post: Any = None) -> State:
        cfg = self.config
        shape = (*deter.shape[:-1], cfg.stoch, cfg.classes)
        tensors = {"deter": deter, "stoch": stoch.reshape(shape), "prior_logits": prior}
        if post is not None:
            tensors["posterior_logits"] = post
        return State(tensors)

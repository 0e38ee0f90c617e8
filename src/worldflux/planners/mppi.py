"""MPPI over latent rollouts, as in TD-MPC2 (nicklashansen/tdmpc2 ``tdmpc2.py``: ``_plan``,
``_estimate_value``), batched over B environments.

The model is a `worldflux.planners.base.PlanningModel`: ``imagine_step`` gives the reward of
each candidate's actions (a ``continue`` < 0.5 ends the return there), ``value`` the bootstrap
Q(z_H, a) at the horizon with ``a`` a ``policy`` sample, ``policy`` also rolls out ``pi_trajs``
of the candidate sequences (with ``transition``), and ``discount`` is used unless
``MPPI(discount=...)``. MPPI is a `worldflux.planners.base.Planner`.

Continuous actions lie in [-1, 1]. Discrete actions (one-hot; a MultiDiscrete action is one
one-hot per group of ``action_spec.groups``) are planned with independent categorical sampling
distributions per step and group: candidates are drawn by Gumbel-max within each group, the
probabilities are refit to the score-weighted elite one-hots, and ``std_min`` acts as a uniform
floor within each group.
Warm start: the previous plan's mean shifted one step (the last step re-initialised);
``reset(mask)`` clears it for finished environments. Without exploration the highest-scoring
elite's first action is returned (deterministic choice); with it an elite is sampled by score
and Gaussian noise with the final std is added (continuous), as in the official planner.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.core.state import State
from worldflux.nn.functional import group_one_hot
from worldflux.planners.base import PlanningModel, describe_state


class MPPI:
    """Model predictive path integral planner with TD-MPC2's defaults. `plan` -> (B, A)."""

    def __init__(
        self,
        horizon: int = 3,
        iterations: int = 6,
        samples: int = 512,
        elites: int = 64,
        pi_trajs: int = 24,
        std_min: float = 0.05,
        std_max: float = 2.0,
        temperature: float = 0.5,
        discount: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        for name, v in (("horizon", horizon), ("iterations", iterations), ("samples", samples),
                        ("elites", elites)):  # fmt: skip
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}: expected an int >= 1, got {v!r}")
        if elites > samples:
            raise ConfigError(f"elites: expected <= samples ({samples}), got {elites}")
        if not 0 <= pi_trajs < samples:
            raise ConfigError(f"pi_trajs: expected in [0, samples={samples}), got {pi_trajs}")
        if not 0.0 < std_min <= std_max:
            raise ConfigError(f"std_min/std_max: expected 0 < min <= max, got {std_min}, {std_max}")
        if temperature <= 0:
            raise ConfigError(f"temperature: expected > 0, got {temperature}")
        if discount is not None and not 0.0 < discount <= 1.0:
            raise ConfigError(f"discount: expected in (0, 1], got {discount}")
        self.horizon, self.iterations = horizon, iterations
        self.samples, self.elites, self.pi_trajs = samples, elites, pi_trajs
        self.std_min, self.std_max, self.temperature = std_min, std_max, temperature
        self.discount, self.generator = discount, generator
        self.last_mean: Tensor | None = None  # (B, H, A) final mean (probabilities if discrete)
        self._prev: Tensor | None = None  # (B, H, A) warm start, None when cold
        self._discrete = False  # the last planned model's actions were one-hot
        self._groups: tuple[int, ...] = ()  # their one-hot group sizes (discrete only)

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> MPPI:
        """Build from a TD-MPC2 config (horizon, iterations, num_samples, ... fields)."""
        args = dict(
            horizon=config.horizon, iterations=config.iterations, samples=config.num_samples,
            elites=config.num_elites, pi_trajs=config.num_pi_trajs, std_min=config.min_std,
            std_max=config.max_std, temperature=config.temperature,
        )  # fmt: skip
        args.update(overrides)
        return cls(**args)

    # --- the Planner protocol (worldflux.planners.base) ---------------------------------------

    @property
    def batch_size(self) -> int | None:
        """Envs the warm start is for; None when cold."""
        return None if self._prev is None else int(self._prev.shape[0])

    def state_dict(self) -> dict[str, Any]:
        """``prev``: the warm start (B, H, A) or None; ``discrete``: whether it holds
        probabilities (what `reset(mask)` refills rows with depends on it); ``groups``: their
        group sizes, only for several groups (MultiDiscrete)."""
        out: dict[str, Any] = {"prev": self._prev, "discrete": self._discrete}
        if len(self._groups) > 1:
            out["groups"] = list(self._groups)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict`."""
        prev, discrete = state.get("prev"), state.get("discrete")
        groups = state.get("groups", [])
        ok = prev is None or (isinstance(prev, Tensor) and prev.dim() == 3)
        ok = ok and isinstance(groups, list) and all(type(g) is int and g >= 1 for g in groups)
        ok = ok and (not groups or prev is None or sum(groups) == prev.shape[-1])
        keys = {"prev", "discrete"} <= set(state) <= {"prev", "discrete", "groups"}
        if not keys or not ok or not isinstance(discrete, bool):
            raise SpecError(
                "state: expected {'prev': None or a (B, H, A) tensor, 'discrete': bool} and, "
                f"for MultiDiscrete, 'groups': [ints summing to A]; got {describe_state(state)}"
            )
        self._prev, self._discrete, self._groups = prev, discrete, tuple(groups)

    def reset(self, mask: Tensor | None = None) -> None:
        """Forget the warm start for all envs, or those where `mask` (B,) bool is True."""
        prev = self._prev
        if mask is None or prev is None:
            self._prev = None
            return
        if mask.dtype != torch.bool or mask.shape != prev.shape[:1]:
            raise SpecError(
                f"mask: expected a bool tensor of shape ({prev.shape[0]},), "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        fresh = self._fresh(prev.shape[0], prev.shape[-1], prev.device, prev.dtype)
        self._prev = torch.where(mask.to(prev.device)[:, None, None], fresh, prev)

    def _fresh(
        self, b: int, a: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """The cold-start mean (B, H, A): zeros, or uniform probabilities (per group) if
        discrete."""
        if not self._discrete:
            return torch.zeros((b, self.horizon, a), device=device, dtype=dtype)
        groups = self._groups if len(self._groups) > 1 else (a,)
        parts = [torch.full((b, self.horizon, g), 1.0 / g, device=device, dtype=dtype)
                 for g in groups]  # fmt: skip
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def _initial_mean(
        self, b: int, a: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        mean = self._fresh(b, a, device, dtype)
        prev = self._prev
        if prev is not None and prev.shape == mean.shape:
            mean[:, :-1] = prev[:, 1:].to(device)  # step t+1 of the last plan is step t now
        return mean

    def _randn(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """Standard normal noise with `like`'s device and dtype."""
        gen = self.generator
        if gen is None:
            return torch.randn(shape, device=like.device, dtype=like.dtype)
        return torch.randn(shape, generator=gen, device=gen.device, dtype=like.dtype).to(like)

    def _gumbel(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """Standard Gumbel noise with `like`'s device and dtype."""
        gen, device = self.generator, like.device
        u = torch.rand(shape, generator=gen, device=gen.device if gen is not None else device,
                       dtype=like.dtype)  # fmt: skip
        return -torch.log(-torch.log(u.to(device).clamp(1e-10, 1.0 - 1e-7)))

    # --- planning -----------------------------------------------------------------------------

    def _discount(self, model: PlanningModel) -> float:
        return self.discount if self.discount is not None else float(model.discount)

    @torch.no_grad()
    def estimate_value(self, model: PlanningModel, state: State, actions: Tensor) -> Tensor:
        """Discounted predicted return plus bootstrap value. actions (B, N, H, A) -> (B, N).

        `state` is already repeated to B*N rows (row b*N + n is env b, candidate n).
        """
        b, n, h, a = actions.shape
        gamma = self._discount(model)
        ret = actions.new_zeros(b * n)
        alive = actions.new_ones(b * n)
        disc = 1.0
        for t in range(h):
            act = actions[:, :, t].reshape(b * n, a)  # (B, N, A) -> (B*N, A)
            state, preds = model.imagine_step(state, act)
            ret = ret + disc * alive * preds["reward"]
            disc *= gamma
            if "continue" in preds:
                alive = alive * (preds["continue"] >= 0.5).to(alive.dtype)
        ret = ret + disc * alive * model.value(state, model.policy(state))
        return ret.reshape(b, n)  # (B*N,) -> (B, N)

    @torch.no_grad()
    def _policy_sequences(self, model: PlanningModel, state: State, p: int) -> Tensor:
        """Roll the policy prior out H steps from each env, p times. -> (B, p, H, A)."""
        b = state.batch_size
        s = _repeat(state, p)
        acts = []
        for t in range(self.horizon):
            act = model.policy(s)
            acts.append(act)
            if t < self.horizon - 1:
                s = model.transition(s, act)
        seq = torch.stack(acts, 1)  # (B*p, H, A)
        return seq.reshape(b, p, self.horizon, -1)  # (B*p, H, A) -> (B, p, H, A)

    def _sample(self, mean: Tensor, std: Tensor, m: int) -> Tensor:
        """m candidate sequences per env from the current distribution. -> (B, m, H, A)."""
        b, h, a = mean.shape
        if self._discrete:
            logits = torch.log(mean.clamp_min(1e-8))[:, None]  # (B, 1, H, A)
            noisy = logits + self._gumbel((b, m, h, a), mean)  # (B, m, H, A)
            return group_one_hot(noisy, self._groups or (a,))  # an argmax per group
        eps = self._randn((b, m, h, a), mean)
        return (mean[:, None] + std[:, None] * eps).clamp(-1.0, 1.0)

    def _refit(self, elite: Tensor, score: Tensor) -> tuple[Tensor, Tensor]:
        """Score-weighted mean and std of the elites (B, K, H, A), score (B, K)."""
        w = score[:, :, None, None]
        mean = (w * elite).sum(1)  # (B, H, A)
        if self._discrete:  # a uniform floor within each group
            groups = self._groups or (mean.shape[-1],)
            parts = [(1.0 - self.std_min) * g + self.std_min / n
                     for g, n in zip(mean.split(groups, -1), groups, strict=True)]  # fmt: skip
            mean = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
            return mean, torch.zeros_like(mean)
        std = (w * (elite - mean[:, None]) ** 2).sum(1).sqrt()
        return mean, std.clamp(self.std_min, self.std_max)

    @torch.no_grad()
    def plan(self, model: PlanningModel, state: State, *, explore: bool) -> Tensor:
        """Plan from `state` (B envs); return the first action (B, A). See the module docs."""
        if not isinstance(state, State):
            raise SpecError(f"state: expected a State, got {type(state).__name__}")
        if not isinstance(model, PlanningModel):
            raise SpecError(
                "model: MPPI needs a PlanningModel (action_spec, discount, imagine_step, "
                "transition, policy, value; see worldflux.planners.base), "
                f"got {type(model).__name__}"
            )
        b, a = state.batch_size, int(model.action_spec.dim)
        self._discrete = bool(model.action_spec.discrete)
        self._groups = tuple(model.action_spec.groups) if self._discrete else ()
        n, k, device = self.samples, self.elites, state.device
        dtype = next(iter(state.tensors.values())).dtype  # plans in the model's dtype
        p = self.pi_trajs
        pi_seq = self._policy_sequences(model, state, p) if p > 0 else None
        rep = _repeat(state, n)
        mean = self._initial_mean(b, a, device, dtype)
        std = torch.full((b, self.horizon, a), self.std_max, device=device, dtype=dtype)
        for _ in range(self.iterations):
            cand = self._sample(mean, std, n - p)
            actions = cand if pi_seq is None else torch.cat([pi_seq, cand], 1)  # (B, N, H, A)
            value = self.estimate_value(model, rep, actions).nan_to_num(0.0)  # (B, N)
            elite_value, idx = value.topk(k, dim=1)  # (B, K)
            elite = actions.gather(1, idx[:, :, None, None].expand(b, k, self.horizon, a))
            score = torch.softmax(self.temperature * elite_value, dim=1)  # (B, K)
            mean, std = self._refit(elite, score)
        self._prev, self.last_mean = mean, mean
        if not explore:
            choice = score.argmax(1)  # (B,)
        else:
            choice = (score.clamp_min(1e-30).log() + self._gumbel((b, k), score)).argmax(1)
        first = elite[torch.arange(b, device=device), choice, 0]  # (B, A)
        if explore and not self._discrete:
            first = first + std[:, 0] * self._randn((b, a), std)
        return first.clamp(-1.0, 1.0) if not self._discrete else first


def _repeat(state: State, times: int) -> State:
    """Each env's row repeated `times` times: (B, ...) -> (B*times, ...), env-major."""
    return State({k: v.repeat_interleave(times, 0) for k, v in state.tensors.items()},
                 dict(state.meta))  # fmt: skip

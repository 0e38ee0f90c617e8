"""Cross-entropy method (CEM) over open-loop action sequences, batched over environments.

The planner knows nothing about models: it asks an `objective` to score candidate sequences and
refits a diagonal Gaussian to the best ones. Warm start: after each `plan` the final mean is kept,
and the next `plan` starts from it shifted one step left (the last step is re-initialised to the
middle of the action box). `reset(mask)` drops the warm start of finished environments;
`batch_size`, `state_dict` and `load_state_dict` are those of the `Planner` protocol
(`worldflux.planners.base`), which model-driven wrappers such as `GoalPlanner` implement on top.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.planners.base import describe_state

Objective = Callable[[Tensor], Tensor]


def _bound(value: float | Tensor, action_dim: int, name: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(action_dim).clone()
    if t.numel() != action_dim:
        raise ConfigError(f"{name}: expected a float or {action_dim} values, got {t.numel()}")
    return t


class CEM:
    """Cross-entropy method planner. `plan` returns the first action (B, A) of the best plan.

    Args: action_dim A; horizon H; samples N candidates per iteration; elites K refit the
    Gaussian; iterations; std_init / std_min / std_max of the sampling std; momentum mixes the
    previous mean into the refit mean (0 = plain CEM); action_low / action_high bound every action
    (float or (A,)); generator makes sampling reproducible (its device is used for sampling).
    """

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        samples: int,
        elites: int,
        iterations: int,
        std_init: float = 1.0,
        std_min: float = 0.05,
        std_max: float = 2.0,
        momentum: float = 0.0,
        action_low: float | Tensor = -1.0,
        action_high: float | Tensor = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        for name, v in (
            ("action_dim", action_dim),
            ("horizon", horizon),
            ("samples", samples),
            ("elites", elites),
            ("iterations", iterations),
        ):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}: expected an int >= 1, got {v!r}")
        if elites > samples:
            raise ConfigError(f"elites: expected <= samples ({samples}), got {elites}")
        if not 0.0 < std_min <= std_max:
            raise ConfigError(f"std_min/std_max: expected 0 < min <= max, got {std_min}, {std_max}")
        if not std_min <= std_init <= std_max:
            raise ConfigError(f"std_init: expected in [{std_min}, {std_max}], got {std_init}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum: expected in [0, 1), got {momentum}")
        self.action_dim, self.horizon = action_dim, horizon
        self.samples, self.elites, self.iterations = samples, elites, iterations
        self.std_init, self.std_min, self.std_max = std_init, std_min, std_max
        self.momentum = momentum
        self.low = _bound(action_low, action_dim, "action_low")
        self.high = _bound(action_high, action_dim, "action_high")
        if bool((self.low >= self.high).any()):
            raise ConfigError("action_low/action_high: expected low < high in every dimension")
        self.generator = generator
        self.last_mean: Tensor | None = None  # (B, H, A) final mean of the last plan
        self.last_std: Tensor | None = None  # (B, H, A) final std of the last plan
        self._prev: Tensor | None = None  # (B, H, A) warm start, None when cleared

    @property
    def batch_size(self) -> int | None:
        """Envs the warm start is for; None when cold."""
        return None if self._prev is None else int(self._prev.shape[0])

    def state_dict(self) -> dict[str, Any]:
        """``prev``: the warm start (B, H, A), or None."""
        return {"prev": self._prev}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict`."""
        prev = state.get("prev")
        ok = prev is None or (isinstance(prev, Tensor) and prev.dim() == 3)
        if set(state) != {"prev"} or not ok:
            raise SpecError(
                "state: expected {'prev': None or a (B, H, A) tensor}, "
                f"got {describe_state(state)}"
            )
        self._prev = prev

    def reset(self, mask: Tensor | None = None) -> None:
        """Forget the warm start: for all envs (mask None) or those where `mask` (B,) is True."""
        if mask is None or self._prev is None:
            self._prev = None
            return
        if mask.dtype != torch.bool or mask.shape != self._prev.shape[:1]:
            raise SpecError(
                f"mask: expected a bool tensor of shape ({self._prev.shape[0]},), "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        mid = self._mid(self._prev.device, self._prev.dtype)
        self._prev = torch.where(mask.to(self._prev.device)[:, None, None], mid, self._prev)

    def _mid(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        return ((self.low + self.high) / 2).to(device, dtype)  # (A,)

    def _normal(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
        if self.generator is None:
            return torch.randn(shape, device=device, dtype=dtype)
        gen_dev = self.generator.device
        return torch.randn(shape, generator=self.generator, device=gen_dev, dtype=dtype).to(device)

    def _initial_mean(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        mid = self._mid(device, dtype)
        mean = mid.expand(batch_size, self.horizon, self.action_dim).clone()
        prev = self._prev
        if prev is not None and prev.shape[0] == batch_size:
            mean[:, :-1] = prev[:, 1:].to(device)  # shift: step t+1 of the last plan is step t
        return mean  # (B, H, A)

    def plan(
        self,
        objective: Objective,
        batch_size: int,
        device: torch.device | str,
        *,
        explore: bool,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Run CEM in `dtype` (the model's); return the first action (B, A).

        `objective(actions (B, N, H, A)) -> (B, N)` scores (higher is better). Without
        exploration the action is the final mean's first step; with it Gaussian noise with the
        final std is added (clamped to the bounds).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise SpecError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        device = torch.device(device)
        b, n, h, a = batch_size, self.samples, self.horizon, self.action_dim
        low, high = self.low.to(device, dtype), self.high.to(device, dtype)
        mean = self._initial_mean(b, device, dtype)
        std = torch.full((b, h, a), self.std_init, device=device, dtype=dtype)
        for _ in range(self.iterations):
            eps = self._normal((b, n, h, a), device, dtype)
            actions = (mean[:, None] + std[:, None] * eps).clamp(low, high)  # (B, N, H, A)
            scores = objective(actions)
            if not isinstance(scores, Tensor) or tuple(scores.shape) != (b, n):
                got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
                raise SpecError(f"objective: expected scores of shape ({b}, {n}), got {got}")
            scores = torch.nan_to_num(scores.detach().to(dtype), nan=-torch.inf)
            idx = scores.topk(self.elites, dim=1).indices  # (B, K)
            elite = actions.gather(1, idx[:, :, None, None].expand(b, self.elites, h, a))
            new_mean = elite.mean(1)  # (B, K, H, A) -> (B, H, A)
            new_std = elite.std(1, unbiased=False) if self.elites > 1 else torch.zeros_like(std)
            mean = self.momentum * mean + (1.0 - self.momentum) * new_mean
            std = new_std.clamp(self.std_min, self.std_max)
        self.last_mean, self.last_std = mean, std
        self._prev = mean
        action = mean[:, 0]
        if explore:
            action = action + std[:, 0] * self._normal((b, a), device, dtype)
        return action.clamp(low, high)

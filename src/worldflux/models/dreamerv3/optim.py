"""LaProp with adaptive gradient clipping: the optimiser of the current official DreamerV3 code.

Chain per parameter tensor (danijar/dreamerv3 ``agent.py::_make_opt``: ``clip_by_agc(0.3)`` ->
``scale_by_rms(0.999, 1e-20)`` -> ``scale_by_momentum(0.9)`` -> learning rate with a linear
warm-up over 1000 steps):

1. AGC: if ||g|| > agc * max(||p||, 1e-3), rescale g to that norm;
2. RMS: nu = b2 * nu + (1 - b2) * g^2, g = g / sqrt(nu / (1 - b2^t) + eps);
3. momentum: mu = b1 * mu + (1 - b1) * g, step = mu / (1 - b1^t);
4. p -= lr * min(1, t / warmup) * step.

Every operation is per tensor, so one instance per learner equals one instance over all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor


class LaProp(torch.optim.Optimizer):
    """LaProp (Ziyin et al. 2020) with adaptive gradient clipping and linear warm-up."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 4e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-20,
        agc: float = 0.3,
        warmup: int = 1000,
        pmin: float = 1e-3,
    ) -> None:
        if lr <= 0 or eps < 0 or agc < 0 or warmup < 0 or not 0 <= betas[0] < 1 > betas[1] >= 0:
            raise ValueError(
                f"LaProp: expected lr > 0, eps >= 0, agc >= 0, warmup >= 0, betas in [0, 1); "
                f"got lr={lr}, eps={eps}, agc={agc}, warmup={warmup}, betas={betas}"
            )
        defaults = dict(lr=lr, betas=betas, eps=eps, agc=agc, warmup=warmup, pmin=pmin)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["nu"] = torch.zeros_like(p)
                    state["mu"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                g = self._agc(p, p.grad, group["agc"], group["pmin"])
                state["nu"].mul_(b2).addcmul_(g, g, value=1 - b2)
                g = g * torch.rsqrt(state["nu"] / (1 - b2**t) + group["eps"])
                state["mu"].mul_(b1).add_(g, alpha=1 - b1)
                ramp = min(1.0, t / group["warmup"]) if group["warmup"] else 1.0
                p.add_(state["mu"], alpha=-group["lr"] * ramp / (1 - b1**t))
        return loss

    @staticmethod
    def _agc(p: Tensor, g: Tensor, clip: float, pmin: float) -> Tensor:
        """Scale `g` so that ||g|| <= clip * max(||p||, pmin) (no device sync)."""
        if clip <= 0:
            return g
        upper = clip * torch.linalg.vector_norm(p).clamp(min=pmin)
        return g * (upper / torch.linalg.vector_norm(g).clamp(min=upper))

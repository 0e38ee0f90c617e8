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
from typing import Any

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

    found_inf_aware = True  # `step` honours ``found_inf`` (see `worldflux.agents.base.masked_step`)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient. When the attribute ``found_inf``
        is set (a 0-d float tensor, the protocol of torch's fused optimizers), a value of 1.0
        makes the step change nothing (parameters, moments, step counts), decided on the
        device with `torch.where` (the gradients may be NaN)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        ok = None if found_inf is None else found_inf != 1.0
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, self.state[p], group, ok)
        return loss

    def _update(
        self, p: Tensor, state: dict[str, Any], group: dict[str, Any], ok: Tensor | None
    ) -> None:
        """The LaProp step of one tensor (module docstring), kept only where `ok` holds."""
        b1, b2 = group["betas"]
        if not state:
            state["nu"], state["mu"] = torch.zeros_like(p), torch.zeros_like(p)
        step = state.get("step", 0)  # float64 on the device: counted without a host read
        if not torch.is_tensor(step) or step.device != p.device or step.dtype != torch.float64:
            state["step"] = torch.as_tensor(step, dtype=torch.float64).to(p.device)
        t = state["step"] + 1
        g = self._agc(p, p.grad, group["agc"], group["pmin"])  # type: ignore[arg-type]
        nu = state["nu"].mul(b2).addcmul_(g, g, value=1 - b2)
        g = g * torch.rsqrt(nu / (1 - b2**t) + group["eps"])
        mu = state["mu"].mul(b1).add_(g, alpha=1 - b1)
        ramp = (t / group["warmup"]).clamp(max=1.0) if group["warmup"] else 1.0
        # addcmul with a 0-d factor rounds as add(alpha=) did (one fused multiply-add)
        new_p = p.addcmul(mu, -group["lr"] * ramp / (1 - b1**t))
        if ok is not None:  # a skipped step keeps every value (NaN-safe: where, not a product)
            t = torch.where(ok, t, state["step"])
            nu, mu = torch.where(ok, nu, state["nu"]), torch.where(ok, mu, state["mu"])
            new_p = torch.where(ok, new_p, p)
        state["step"].copy_(t)
        state["nu"].copy_(nu)
        state["mu"].copy_(mu)
        p.copy_(new_p)

    @staticmethod
    def _agc(p: Tensor, g: Tensor, clip: float, pmin: float) -> Tensor:
        """Scale `g` so that ||g|| <= clip * max(||p||, pmin) (no device sync)."""
        if clip <= 0:
            return g
        upper = clip * torch.linalg.vector_norm(p).clamp(min=pmin)
        return g * (upper / torch.linalg.vector_norm(g).clamp(min=upper))

"""Anti-collapse tools: SIGReg (Epps-Pulley on random projections), VICReg, EMA target, diagnostics.

SIGReg (LeJEPA, Balestriero & LeCun 2025; used by LeWM): project embeddings z (N, D) on M random
unit directions and test each 1-D sample against N(0, 1) with the Epps-Pulley statistic

    EP = N * integral_R |phi_N(t) - exp(-t^2 / 2)|^2 * exp(-t^2 / 2) dt,

phi_N(t) = mean_n exp(i t x_n) being the empirical characteristic function. The integrand is even
in t, so it is integrated on [0, t_max] with the trapezoid rule and doubled; the defaults (17
knots, t_max = 3) are those of the LeJEPA / LeWM reference ``SIGReg`` (``linspace(0, 3, 17)``),
which truncates the integral where the weight exp(-t^2 / 2) is about 0.01. For Gaussian data EP
stays O(1) whatever N (its expectation is about 1.06), for collapsed data it grows like N.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from worldflux.core.exceptions import SpecError


def epps_pulley(x: Tensor, knots: int = 17, t_max: float = 3.0) -> Tensor:
    """Epps-Pulley statistic of each column of `x` (N, M) against N(0, 1). -> (M,)."""
    if x.dim() != 2 or x.shape[0] < 2:
        raise SpecError(f"x: expected shape (N >= 2, M), got {tuple(x.shape)}")
    n = x.shape[0]
    t = torch.linspace(0.0, t_max, knots, device=x.device, dtype=x.dtype)  # (K,)
    xt = x.unsqueeze(-1) * t  # (N, M, K)
    re, im = torch.cos(xt).mean(0), torch.sin(xt).mean(0)  # (M, K) ECF real / imaginary parts
    gauss = torch.exp(-0.5 * t.square())  # (K,) CF of N(0, 1), also the weight
    err = ((re - gauss).square() + im.square()) * gauss  # (M, K)
    return 2.0 * n * torch.trapezoid(err, t, dim=-1)


def sigreg(
    z: Tensor,
    projections: int,
    knots: int = 17,
    t_max: float = 3.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SIGReg of embeddings `z` (N, D): mean Epps-Pulley over `projections` random directions."""
    if z.dim() != 2:
        raise SpecError(f"z: expected shape (N, D), got {tuple(z.shape)}")
    dirs = torch.randn(z.shape[1], projections, generator=generator, device="cpu").to(z)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)  # (D, M) unit columns
    return epps_pulley(z @ dirs, knots, t_max).mean()


def vicreg(z: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """VICReg variance + covariance terms of `z` (N, D) (Bardes et al. 2022; weights 25 : 1)."""
    if z.dim() != 2 or z.shape[0] < 2:
        raise SpecError(f"z: expected shape (N >= 2, D), got {tuple(z.shape)}")
    n, d = z.shape
    zc = z - z.mean(0)
    std = torch.sqrt(zc.var(0) + eps)
    var_loss = torch.relu(gamma - std).mean()
    cov = (zc.T @ zc) / (n - 1)  # (D, D)
    off = cov - torch.diag(torch.diag(cov))
    cov_loss = off.square().sum() / d
    return 25.0 * var_loss + cov_loss


def effective_rank(z: Tensor) -> Tensor:
    """exp(entropy) of the normalised singular values of centred `z` (N, D); in [1, min(N, D)].

    NaN when `z` holds a non-finite value (the SVD would raise instead, before the update's
    non-finite guard could skip the step); decided on the device, without a host sync.
    """
    finite = torch.isfinite(z).all()
    z = torch.where(finite, z, torch.zeros_like(z))
    # svdvals needs at least float32 (no half types); float64 stays float64
    s = torch.linalg.svdvals((z - z.mean(0)).to(torch.promote_types(z.dtype, torch.float32)))
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return torch.where(finite, torch.exp(entropy), torch.full_like(entropy, float("nan")))


class EMATarget(nn.Module):
    """A frozen copy of a module, updated as target <- decay * target + (1 - decay) * online."""

    def __init__(self, online: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.target = copy.deepcopy(online)
        self.target.requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        """One EMA step towards the parameters (and buffers) of `online`."""
        for t, o in zip(self.target.parameters(), online.parameters(), strict=True):
            t.lerp_(o.detach(), 1.0 - self.decay)
        for tb, ob in zip(self.target.buffers(), online.buffers(), strict=True):
            tb.copy_(ob)

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        with torch.no_grad():
            return self.target(*args, **kwargs)

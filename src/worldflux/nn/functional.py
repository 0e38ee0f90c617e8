"""Math helpers shared by the families. Each takes explicit arguments, never a config."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def symlog(x: Tensor) -> Tensor:
    """sign(x) * log(1 + |x|): compresses large magnitudes, identity near zero."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    """Inverse of `symlog`: sign(x) * (exp(|x|) - 1)."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def two_hot(x: Tensor, bins: Tensor) -> Tensor:
    """Encode values on a sorted 1-D grid as two-hot weights. (...) -> (..., K).

    The weight is split between the two neighbouring bins so that `(weights * bins).sum(-1)`
    gives back `x` (clamped to the grid's range).
    """
    k = bins.shape[0]
    x = x.clamp(bins[0], bins[-1])
    # index of the first bin strictly above x, in [1, K-1]
    above = torch.searchsorted(bins, x.detach().contiguous(), right=True).clamp(1, k - 1)
    below = above - 1
    lo, hi = bins[below], bins[above]
    w_hi = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    # the promoted dtype: under bf16 autocast `x` may be bf16 while the grid stays fp32
    out = torch.zeros(*x.shape, k, dtype=w_hi.dtype, device=x.device)
    out.scatter_(-1, below.unsqueeze(-1), (1.0 - w_hi).unsqueeze(-1))
    out.scatter_add_(-1, above.unsqueeze(-1), w_hi.unsqueeze(-1))
    return out


def two_hot_mean(logits: Tensor, bins: Tensor) -> Tensor:
    """Expected value of softmax(logits) over `bins`. (..., K) -> (...)."""
    return (F.softmax(logits, dim=-1) * bins).sum(-1)


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Cross-entropy against a target distribution. (..., K), (..., K) -> (...)."""
    return -(target_probs * F.log_softmax(logits, dim=-1)).sum(-1)


def unimix(logits: Tensor, mix: float) -> Tensor:
    """Log-probabilities of (1 - mix) * softmax(logits) + mix * uniform. (..., K) -> (..., K)."""
    if mix <= 0.0:
        return F.log_softmax(logits, dim=-1)
    probs = F.softmax(logits, dim=-1)
    probs = (1.0 - mix) * probs + mix / logits.shape[-1]
    return torch.log(probs)


def simnorm(x: Tensor, group: int) -> Tensor:
    """Softmax within consecutive groups of `group` features. (..., D) -> (..., D)."""
    shape = x.shape
    x = x.reshape(*shape[:-1], shape[-1] // group, group)  # (..., D) -> (..., D/g, g)
    return F.softmax(x, dim=-1).reshape(shape)  # (..., D/g, g) -> (..., D)


# Groups of unequal sizes (a MultiDiscrete action: one categorical per group of `sizes`). One
# group is the plain last-dim op, so single-categorical callers keep their exact numbers.


def group_log_softmax(x: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """log_softmax within consecutive groups of `sizes` (summing to D). (..., D) -> (..., D)."""
    if len(sizes) == 1:
        return F.log_softmax(x, dim=-1)
    return torch.cat([F.log_softmax(g, dim=-1) for g in x.split(sizes, -1)], -1)


def group_sum(x: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """Sum within consecutive groups of `sizes`. (..., D) -> (..., len(sizes))."""
    if len(sizes) == 1:
        return x.sum(-1, keepdim=True)
    return torch.stack([g.sum(-1) for g in x.split(sizes, -1)], -1)


def group_one_hot(x: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """One-hot of each group's argmax, in `x`'s dtype. (..., D) -> (..., D)."""
    if len(sizes) == 1:
        return F.one_hot(x.argmax(-1), x.shape[-1]).to(x.dtype)
    parts = [F.one_hot(g.argmax(-1), n) for g, n in zip(x.split(sizes, -1), sizes, strict=True)]
    return torch.cat(parts, -1).to(x.dtype)

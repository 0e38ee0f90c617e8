"""Config-free distribution helpers: symexp two-hot bins, straight-through categoricals."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from worldflux.nn.functional import symexp


def symexp_bins(num: int, low: float = -20.0, high: float = 20.0) -> Tensor:
    """`num` bins spaced uniformly in symlog space: symexp(linspace(low, high, num)). -> (num,).

    With low == -high and odd `num` the grid is built from one half, so it is exactly
    antisymmetric (centre bin exactly 0), which `symmetric_mean` relies on.
    """
    if low == -high and num % 2 == 1:
        half = symexp(torch.linspace(0.0, high, num // 2 + 1, dtype=torch.float64))
        return torch.cat([-half[1:].flip(0), half]).float()
    return symexp(torch.linspace(low, high, num, dtype=torch.float64)).float()


def symmetric_mean(probs: Tensor, bins: Tensor) -> Tensor:
    """sum(probs * bins) over the last dim, pairing bins from both ends. (..., K) -> (...).

    For bins symmetric around 0 (odd K), a uniform `probs` gives exactly 0: the huge outer
    bins (+-4.9e8 for symexp(20)) cancel pairwise instead of leaving float32 rounding noise.
    """
    k = bins.shape[0]
    if k % 2 == 0:
        raise ValueError(f"symmetric_mean: expected an odd number of bins, got {k}")
    m = k // 2
    # b[m - 1 - j] == -b[m + 1 + j], so the mean is sum_j (p[m+1+j] - p[m-1-j]) * b[m+1+j]
    diff = probs[..., m + 1 :] - probs[..., :m].flip(-1)  # (..., m)
    return diff @ bins[m + 1 :] + probs[..., m] * bins[m]


def unimix_logp(logits: Tensor, mix: float) -> Tensor:
    """Same values as `worldflux.nn.functional.unimix`: log((1 - mix) * softmax + mix / K).

    (..., K) -> (..., K). The softmax runs over a non-innermost dim, which is an order of
    magnitude faster on CPU for the small K of latents and actions (K = 4 .. 64).
    """
    probs = F.softmax(logits.transpose(-1, -2).contiguous(), -2).transpose(-1, -2)
    if mix > 0.0:
        probs = probs * (1.0 - mix) + mix / logits.shape[-1]
    return probs.log()


def two_hot_cross_entropy(
    logits: Tensor, target: Tensor, bins: Tensor, log_probs: Tensor | None = None
) -> Tensor:
    """Cross-entropy of softmax(logits) against the two-hot encoding of `target` on `bins`.

    (..., K), (...) -> (...). Same value as ``-(two_hot(target, bins) * log_softmax).sum(-1)``,
    reading the two log-probabilities by index instead of building the (..., K) encoding.
    `log_probs` (= log_softmax(logits)) may be passed to reuse it across targets.
    """
    k = bins.shape[0]
    x = target.detach().clamp(bins[0], bins[-1]).unsqueeze(-1)
    above = torch.searchsorted(bins, x.contiguous(), right=True).clamp(1, k - 1)
    below = above - 1
    lo, hi = bins[below], bins[above]
    w_hi = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    logp = F.log_softmax(logits, -1) if log_probs is None else log_probs
    pair = torch.cat([logp.gather(-1, below), logp.gather(-1, above)], -1)  # (..., 2)
    return -(pair[..., 0] * (1.0 - w_hi[..., 0]) + pair[..., 1] * w_hi[..., 0])


def sample_onehot(log_probs: Tensor) -> Tensor:
    """One-hot samples of categoricals given by `log_probs` (..., K).

    Inverse-CDF sampling: one uniform per categorical (not one per class, as Gumbel-max needs);
    the one-hot is the first class whose CDF exceeds the uniform.
    """
    cdf = log_probs.detach().exp().cumsum(-1)
    u = torch.rand_like(cdf[..., :1]) * cdf[..., -1:]  # u < cdf[-1]: some class always fires
    above = (cdf > u).to(log_probs.dtype)
    return above - F.pad(above[..., :-1], (1, 0))


def straight_through(onehot: Tensor, log_probs: Tensor) -> Tensor:
    """Straight-through gradients: the value of `onehot`, the gradient of the probabilities."""
    if not (torch.is_grad_enabled() and log_probs.requires_grad):
        return onehot  # no graph to attach: skip the two extra passes
    probs = log_probs.exp()
    return onehot + (probs - probs.detach())  # exactly `onehot`: p - p is 0 in floating point


def categorical_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) of categoricals over the last dim. (..., K) -> (...)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def categorical_entropy(log_p: Tensor) -> Tensor:
    """Entropy of categoricals over the last dim. (..., K) -> (...)."""
    return -(log_p.exp() * log_p).sum(-1)

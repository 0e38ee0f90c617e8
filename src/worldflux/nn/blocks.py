"""Config-free building blocks used by DreamerV3: block-diagonal linear layers and init helpers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# std of a unit normal truncated to [-2, 2]; dividing by it restores the requested variance
_TRUNC_STD = 0.87962566103423978


def trunc_normal_fan_in_(weight: Tensor, fan_in: int, scale: float = 1.0) -> Tensor:
    """Variance-scaling init: truncated normal with variance `scale / fan_in` (in place).

    `scale == 0` zero-initialises (DreamerV3 uses this for the reward and critic outputs).
    """
    with torch.no_grad():
        if scale == 0.0:
            return weight.zero_()
        std = math.sqrt(scale / fan_in) / _TRUNC_STD
        return nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


def init_linear_(layer: nn.Linear, scale: float = 1.0) -> nn.Linear:
    """Fan-in truncated-normal weights and zero bias for `layer`; returns it."""
    trunc_normal_fan_in_(layer.weight, layer.in_features, scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class BlockLinear(nn.Module):
    """Block-diagonal linear map: `groups` independent Linear layers on consecutive slices.

    (..., in_features) -> (..., out_features). Slice g of the input (width in/groups) only feeds
    slice g of the output, so the cost is 1/groups of a dense layer (DreamerV3's block GRU).
    """

    def __init__(self, in_features: int, out_features: int, groups: int, bias: bool = True):
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(
                f"BlockLinear: in_features={in_features} and out_features={out_features} "
                f"must both be divisible by groups={groups}"
            )
        self.groups, self.in_features, self.out_features = groups, in_features, out_features
        gin, gout = in_features // groups, out_features // groups
        self.weight = nn.Parameter(torch.empty(groups, gin, gout))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        trunc_normal_fan_in_(self.weight, gin)

    def grouped(self, x: Tensor, add: Tensor | None = None) -> Tensor:
        """Group-major form: x (G, N, in/G) -> (G, N, out/G), plus `add` (G, N, out/G)."""
        if add is None and self.bias is not None:
            add = self.bias.view(self.groups, 1, -1)  # (out,) -> (G, 1, out/G)
        elif add is not None and self.bias is not None:
            add = add + self.bias.view(self.groups, 1, -1)
        return torch.bmm(x, self.weight) if add is None else torch.baddbmm(add, x, self.weight)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        g = self.groups
        x = x.reshape(-1, g, self.in_features // g).transpose(0, 1)  # (N, in) -> (G, N, in/G)
        y = self.grouped(x.contiguous()).transpose(0, 1)  # (G, N, out/G) -> (N, G, out/G)
        return y.reshape(*lead, self.out_features)  # (N, G, out/G) -> (..., out)


class ChannelNorm(nn.Module):
    """RMS/Layer norm over the channel dim of (N, C, H, W) maps (normalises each pixel)."""

    def __init__(self, channels: int, kind: str = "rms", eps: float = 1e-5) -> None:
        super().__init__()
        if kind not in ("rms", "layer"):
            raise ValueError(f"ChannelNorm: kind must be 'rms' or 'layer', got {kind!r}")
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if kind == "layer" else None

    def forward(self, x: Tensor) -> Tensor:
        c = (x.shape[1],)
        nhwc = x.permute(0, 2, 3, 1)  # a free view for channels_last maps
        if self.kind == "layer":
            y = F.layer_norm(nhwc, c, self.weight, self.bias, self.eps)
        else:
            y = F.rms_norm(nhwc, c, self.weight, self.eps)
        return y.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)


def set_norm_eps_(module: nn.Module, eps: float) -> nn.Module:
    """Set the epsilon of every RMS/Layer norm inside `module` (in place); returns `module`."""
    for m in module.modules():
        if isinstance(m, nn.RMSNorm | nn.LayerNorm | ChannelNorm):
            m.eps = eps
    return module

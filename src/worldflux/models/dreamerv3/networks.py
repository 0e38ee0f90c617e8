"""DreamerV3 encoder, decoder and prediction heads (official ``rssm.Encoder/Decoder``, heads).

- Encoder: symlog -> MLP for the concatenated vector fields; CNN for the images (uint8 scaled to
  [-0.5, 0.5]); the token is the concatenation of both.
- Decoder: MLP -> linear (symlog-space MSE) for vectors; for images a block-linear projection of
  ``deter`` plus an MLP of ``stoch`` to a (C, 4, 4) map, then `ConvUp` and a sigmoid (MSE on
  pixels in [0, 1]).
- `TwoHotHead`: 255 symexp-spaced bins over [-20, 20], zero-initialised output (reward, critic).
- `BinaryHead`: one logit (continue).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldflux.core.spec import ObsSpec
from worldflux.models.dreamerv3.config import DreamerV3Config
from worldflux.models.dreamerv3.rssm import init_linears_
from worldflux.nn.blocks import BlockLinear, ChannelNorm, init_linear_
from worldflux.nn.conv import ConvDown, ConvUp
from worldflux.nn.distributions import symexp_bins, symmetric_mean, two_hot_cross_entropy
from worldflux.nn.functional import symexp, symlog
from worldflux.nn.mlp import MLP, make_act, make_norm


def _to_chw(x: Tensor, channels_last: bool) -> Tensor:
    """(..., H, W, C) -> (..., C, H, W) when stored channels-last, else unchanged."""
    return x.movedim(-1, -3) if channels_last else x


def _dtype(module: nn.Module) -> torch.dtype:
    """The dtype of `module`'s weights: inputs follow it, so a float64 model runs in float64."""
    return next(module.parameters()).dtype


def _image_geometry(spec: ObsSpec, stages: int) -> tuple[int, int, int]:
    """Total image channels and the (h, w) after `stages` halvings; all images share H, W."""
    chw = [spec.fields[k].chw for k in spec.image_keys]
    sizes = {(h, w) for _, h, w in chw}
    if len(sizes) != 1:
        raise ValueError(f"DreamerV3: all image fields must share H and W, got {sorted(sizes)}")
    (h, w) = sizes.pop()
    f = 2**stages
    if h % f or w % f:
        raise ValueError(f"DreamerV3: image H, W must be multiples of {f}, got {(h, w)}")
    return sum(c for c, _, _ in chw), h // f, w // f


class Encoder(nn.Module):
    """obs dict of (..., *field_shape) -> tokens (..., out_dim)."""

    def __init__(self, spec: ObsSpec, cfg: DreamerV3Config) -> None:
        super().__init__()
        self.spec = spec
        self.vec_keys, self.img_keys = spec.vector_keys, spec.image_keys
        self.out_dim = 0
        self.mlp: MLP | None = None
        self.cnn: ConvDown | None = None
        if self.vec_keys:
            vec_in = sum(spec.fields[k].size for k in self.vec_keys)
            self.mlp = MLP(vec_in, cfg.units, None, cfg.enc_layers, cfg.norm, cfg.act)
            init_linears_(self.mlp)
            self.out_dim += self.mlp.out_dim
        if self.img_keys:
            chans, h, w = _image_geometry(spec, len(cfg.cnn_depths))
            self.cnn = ConvDown(
                chans, cfg.cnn_depths, cfg.kernel, cfg.norm, cfg.act, cfg.cnn_strided
            )
            self.out_dim += cfg.cnn_depths[-1] * h * w

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        key = next(iter(self.spec.fields))
        lead = obs[key].shape[: obs[key].dim() - len(self.spec.fields[key].shape)]  # batch dims
        outs = []
        if self.mlp is not None:
            vec = torch.cat([obs[k].reshape(*lead, -1) for k in self.vec_keys], -1)
            outs.append(self.mlp(symlog(vec.to(_dtype(self.mlp)))))
        if self.cnn is not None:
            imgs = [_to_chw(obs[k], self.spec.fields[k].channels_last) for k in self.img_keys]
            x = torch.cat(imgs, -3).flatten(0, -4)  # (..., C, H, W) -> (N, C, H, W)
            x = x.to(_dtype(self.cnn)) / 255.0 - 0.5  # uint8 -> the weights' dtype
            outs.append(self.cnn(x).reshape(*lead, -1))  # (N, C', h, w) -> (..., C'*h*w)
        return torch.cat(outs, -1)


class Decoder(nn.Module):
    """Features (deter (..., D), stoch (..., S*C)) -> per-field reconstructions."""

    def __init__(self, spec: ObsSpec, cfg: DreamerV3Config) -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.vec_keys, self.img_keys = spec.vector_keys, spec.image_keys
        D, SC = cfg.deter, cfg.stoch * cfg.classes
        self.vec_mlp: MLP | None = None
        if self.vec_keys:
            self.vec_sizes = [spec.fields[k].size for k in self.vec_keys]
            self.vec_mlp = MLP(
                D + SC, cfg.units, sum(self.vec_sizes), cfg.dec_layers, cfg.norm, cfg.act
            )
            init_linears_(self.vec_mlp)
        if self.img_keys:
            self.img_channels, h, w = _image_geometry(spec, len(cfg.cnn_depths))
            c = cfg.cnn_depths[-1]
            self.space = (c, h, w)
            self.sp0 = BlockLinear(D, c * h * w, cfg.dec_blocks)
            self.sp1 = init_linears_(nn.Linear(SC, 2 * cfg.units))
            self.sp1_norm = make_norm(cfg.norm, 2 * cfg.units)
            self.sp2 = init_linears_(nn.Linear(2 * cfg.units, c * h * w))
            self.sp_norm = ChannelNorm(c, cfg.norm)
            self.act = make_act(cfg.act)
            self.up = ConvUp(
                self.img_channels, cfg.cnn_depths, cfg.kernel, cfg.norm, cfg.act, cfg.cnn_strided
            )

    def vectors(self, feat: Tensor) -> dict[str, Tensor]:
        """Symlog-space predictions per vector field. feat (..., F) -> {k: (..., size_k)}."""
        assert self.vec_mlp is not None
        outs = self.vec_mlp(feat).split(self.vec_sizes, -1)
        return dict(zip(self.vec_keys, outs, strict=True))

    def images(self, deter: Tensor, stoch: Tensor) -> Tensor:
        """Pixel means in [0, 1]. deter (N, D), stoch (N, S*C) -> (N, C_img, H, W)."""
        c, h, w = self.space
        N = deter.shape[0]
        # block g of sp0 produces channels [g*c/g, (g+1)*c/g) of the whole map
        x0 = self.sp0(deter).view(N, c, h, w)  # (N, G * (c/G)*h*w) -> (N, c, h, w)
        x1 = self.sp2(self.act(self.sp1_norm(self.sp1(stoch)))).view(N, c, h, w)
        x = self.act(self.sp_norm(x0 + x1))
        return torch.sigmoid(self.up(x))

    def forward(self, deter: Tensor, stoch: Tensor) -> dict[str, Tensor]:
        """Reconstructions in the observation layout: vectors symexp'ed, images in [0, 1]."""
        lead = deter.shape[:-1]
        out: dict[str, Tensor] = {}
        if self.vec_keys:
            feat = torch.cat([deter, stoch], -1)
            out.update({k: symexp(v) for k, v in self.vectors(feat).items()})
        if self.img_keys:
            for k, img in self._split_images(deter, stoch).items():
                f = self.spec.fields[k]
                img = img.reshape(*lead, *img.shape[1:])  # (N, C, H, W) -> (..., C, H, W)
                out[k] = img.movedim(-3, -1) if f.channels_last else img
        return out

    def _split_images(self, deter: Tensor, stoch: Tensor) -> dict[str, Tensor]:
        flat = self.images(deter.flatten(0, -2), stoch.flatten(0, -2))
        sizes = [self.spec.fields[k].chw[0] for k in self.img_keys]
        return dict(zip(self.img_keys, flat.split(sizes, 1), strict=True))

    def loss(self, deter: Tensor, stoch: Tensor, obs: dict[str, Tensor]) -> Tensor:
        """Summed reconstruction loss per step: symlog MSE (vectors) + MSE (images). -> (...)."""
        lead, dtype = deter.shape[:-1], deter.dtype
        total = deter.new_zeros(lead)
        if self.vec_keys:
            preds = self.vectors(torch.cat([deter, stoch], -1))
            for k, p in preds.items():
                target = symlog(obs[k].reshape(*lead, -1).to(dtype))
                total = total + (p - target).pow(2).sum(-1)
        if self.img_keys:
            for k, img in self._split_images(deter, stoch).items():
                f = self.spec.fields[k]
                target = _to_chw(obs[k], f.channels_last).flatten(0, -4).to(dtype) / 255.0
                err = (img - target).pow(2).flatten(1).sum(-1)  # (N, C, H, W) -> (N,)
                total = total + err.view(lead)
        return total


def shared_input_mlps(x: Tensor, mlps: Sequence[MLP]) -> list[Tensor]:
    """Run several `MLP`s on the same input (..., F), their first layers as ONE matmul.

    Same outputs as ``[m(x) for m in mlps]``; reading a large `x` once instead of once per head
    matters when the heads are narrow (memory-bound on CPU).
    """
    blocks = [cast(nn.Sequential, m.trunk[0]) for m in mlps]
    if any(len(b) != 3 for b in blocks):
        raise ValueError("shared_input_mlps: expects first blocks (Linear, Norm, Act), no dropout")
    firsts = [cast(nn.Linear, b[0]) for b in blocks]
    weight = torch.cat([f.weight for f in firsts])  # (sum of widths, F)
    bias = None
    if any(f.bias is not None for f in firsts):
        bias = torch.cat(
            [f.bias if f.bias is not None else f.weight.new_zeros(f.out_features) for f in firsts]
        )
    hidden = F.linear(x, weight, bias).split([f.out_features for f in firsts], -1)
    outs = []
    for m, b, h in zip(mlps, blocks, hidden, strict=True):
        h = b[2](b[1](h))  # norm, act of the first block
        outs.append(m.head(cast(nn.Sequential, m.trunk)[1:](h)))
    return outs


class TwoHotHead(nn.Module):
    """MLP -> logits over symexp-spaced bins. feat (..., F) -> logits (..., K)."""

    bins: Tensor

    def __init__(self, in_dim: int, cfg: DreamerV3Config, layers: int) -> None:
        super().__init__()
        self.net = init_linears_(MLP(in_dim, cfg.units, cfg.bins, layers, cfg.norm, cfg.act))
        init_linear_(self.net.head, 0.0)  # type: ignore[arg-type]  # zero output (outscale 0)
        self.register_buffer("bins", symexp_bins(cfg.bins), persistent=False)

    def forward(self, feat: Tensor) -> Tensor:
        return self.net(feat)

    def mean(self, logits: Tensor) -> Tensor:
        """Predicted value. (..., K) -> (...)."""
        return symmetric_mean(F.softmax(logits, -1), self.bins)

    def loss(self, logits: Tensor, target: Tensor, log_probs: Tensor | None = None) -> Tensor:
        """Cross-entropy against the two-hot encoding of `target` (...). -> (...).
        Pass ``log_softmax(logits)`` as `log_probs` to share it between several targets."""
        return two_hot_cross_entropy(logits, target, self.bins, log_probs)


class BinaryHead(nn.Module):
    """MLP -> one Bernoulli logit. feat (..., F) -> logit (...)."""

    def __init__(self, in_dim: int, cfg: DreamerV3Config, layers: int) -> None:
        super().__init__()
        self.net = init_linears_(MLP(in_dim, cfg.units, 1, layers, cfg.norm, cfg.act))

    def forward(self, feat: Tensor) -> Tensor:
        return self.net(feat).squeeze(-1)

    def loss(self, logit: Tensor, target: Tensor) -> Tensor:
        """Binary cross-entropy with a (soft) target in [0, 1]. -> (...)."""
        return F.binary_cross_entropy_with_logits(logit, target, reduction="none")

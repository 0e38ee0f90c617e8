"""TD-MPC2 building blocks: normed MLPs, SimNorm, encoders, policy priors, running Q scale.

Architecture facts follow nicklashansen/tdmpc2 ``common/layers.py`` (NormedLinear = Linear ->
Dropout -> LayerNorm -> Mish; ``mlp``; ``conv`` 64x64 encoder with random shift; ``enc``),
``common/math.py`` (log-std squashing, Gaussian log-prob, tanh squash) and ``common/scale.py``
(5th-95th percentile running scale). Written from those descriptions, not copied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldflux.core.exceptions import SpecError
from worldflux.core.spec import ObsSpec
from worldflux.nn.ensemble import Mish
from worldflux.nn.functional import group_log_softmax, group_one_hot, group_sum

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class SimNorm(nn.Module):
    """Softmax within consecutive groups of `group` features. (..., D) -> (..., D)."""

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group

    def forward(self, x: Tensor) -> Tensor:
        # same as nn.functional.simnorm; softmax over a strided dim is ~5x faster on CPU than
        # over a last dim of 8
        shape = x.shape
        groups = x.reshape(-1, shape[-1] // self.group, self.group)  # (N, D) -> (N, G, g)
        out = groups.transpose(1, 2).softmax(1).transpose(1, 2)  # softmax within each group
        return out.reshape(shape)  # (N, G, g) -> (..., D)


class NormedLinear(nn.Module):
    """Linear (with bias) -> Dropout -> LayerNorm -> activation. (..., i) -> (..., o)."""

    def __init__(self, in_dim: int, out_dim: int, act: nn.Module | None, dropout: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.ln = nn.LayerNorm(out_dim)
        self.act = act if act is not None else Mish()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.ln(self.dropout(self.linear(x))))


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, final: nn.Module | None = None):
    """TD-MPC2's MLP: NormedLinear blocks, then a Linear, or a NormedLinear with `final` act."""
    dims = [in_dim, *hidden]
    layers: list[nn.Module] = [
        NormedLinear(a, b, None) for a, b in zip(dims[:-1], dims[1:], strict=True)
    ]
    last = (
        NormedLinear(dims[-1], out_dim, final)
        if final is not None
        else nn.Linear(dims[-1], out_dim)
    )
    return nn.Sequential(*layers, last)


def init_linear(module: nn.Module) -> None:
    """Official init: Linear weights truncated normal (std 0.02), biases zero."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ShiftAug(nn.Module):
    """Random integer shift of up to `pad` pixels (replicate padding), per sample.

    (N, C, H, W) float -> same shape. Equivalent to DrQ's shift via an exact crop.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        if self.pad == 0:
            return x
        n, c, h, w = x.shape
        p = self.pad
        padded = F.pad(x, (p, p, p, p), mode="replicate")  # (N, C, H+2p, W+2p)
        shift = torch.randint(0, 2 * p + 1, (n, 2), device=x.device)
        rows = (shift[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (shift[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]
        out = padded.gather(2, rows.expand(n, c, h, w + 2 * p))  # (N, C, H, W+2p)
        return out.gather(3, cols.expand(n, c, h, w))  # (N, C, H, W)


def conv_trunk(in_ch: int, channels: int) -> nn.Sequential:
    """The official 64x64 conv stack: 4 convs with ReLU between, flattened.

    (N, C, 64, 64) float -> (N, channels * 16).
    """
    return nn.Sequential(
        nn.Conv2d(in_ch, channels, 7, stride=2), nn.ReLU(),
        nn.Conv2d(channels, channels, 5, stride=2), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, stride=1), nn.Flatten(),
    )  # fmt: skip


class PixelEncoder(nn.Module):
    """64x64 uint8 image -> SimNorm latent: 4 convs (ReLU), flatten, SimNorm.

    (N, C, 64, 64) -> (N, latent_dim). When ``num_channels * 16 != latent_dim`` a Linear
    projection is added before SimNorm (the official code assumes they match).
    """

    def __init__(self, in_ch: int, channels: int, latent_dim: int, group: int, pad: int):
        super().__init__()
        self.aug = ShiftAug(pad)
        self.convs = conv_trunk(in_ch, channels)
        flat = channels * 4 * 4  # 64 -> 29 -> 13 -> 6 -> 4
        self.proj = nn.Linear(flat, latent_dim) if flat != latent_dim else nn.Identity()
        self.norm = SimNorm(group)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(next(self.convs.parameters()).dtype)  # uint8 -> the weights' dtype
        if self.training:
            x = self.aug(x)
        x = x / 255.0 - 0.5
        return self.norm(self.proj(self.convs(x)))


class FusedEncoder(nn.Module):
    """Image and vector fields -> one SimNorm latent. (N, ...) -> (N, latent_dim).

    Each 64x64 image field goes through its own conv trunk (`conv_trunk`, with random shift and
    [-0.5, 0.5] scaling as in `PixelEncoder`) to ``channels * 16`` features; these and the
    vector fields are concatenated and fed to the state encoder MLP, which ends in SimNorm.

    Source: the official single-task code (nicklashansen/tdmpc2 ``common/layers.py`` ``enc``)
    builds one encoder per observation key, but ``WorldModel.encode`` uses only the key
    ``cfg.obs``: it never fuses modalities. The authors' multi-modal follow-up in the same code
    base (Newt: ``layers.enc`` for ``cfg.obs == 'rgb'`` and ``WorldModel.encode``) concatenates
    the state with the image features and feeds them through the state MLP encoder; that is
    done here. Departure: Newt's image features are a frozen pretrained embedding, here they
    come from the official conv trunk, trained with the world model.
    """

    def __init__(self, spec: ObsSpec, enc_dim: int, layers: int, latent_dim: int, group: int,
                 channels: int, pad: int) -> None:  # fmt: skip
        super().__init__()
        self.spec = spec
        self.aug = ShiftAug(pad)
        trunks = []  # one per image key, in `spec.image_keys` order (keys may hold dots)
        for key in spec.image_keys:
            c, h, w = spec.fields[key].chw
            if (h, w) != (64, 64):
                raise SpecError(
                    f"obs_space[{key!r}]: the TD-MPC2 pixel encoder expects 64x64, got {h}x{w}"
                )
            trunks.append(conv_trunk(c, channels))
        self.trunks = nn.ModuleList(trunks)
        in_dim = len(trunks) * channels * 16 + sum(spec.fields[k].size for k in spec.vector_keys)
        hidden = max(layers - 1, 1) * [enc_dim]
        self.mlp = mlp(in_dim, hidden, latent_dim, final=SimNorm(group))

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        dtype = next(self.mlp.parameters()).dtype  # a float64 model runs in float64
        parts = []
        for key, trunk in zip(self.spec.image_keys, self.trunks, strict=True):
            x = obs[key].to(dtype)
            if self.spec.fields[key].channels_last:
                x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
            if self.training:
                x = self.aug(x)
            parts.append(trunk(x / 255.0 - 0.5))  # (N, channels * 16)
        parts += [obs[k].to(dtype) for k in self.spec.vector_keys]
        return self.mlp(torch.cat(parts, -1))  # (N, images * channels * 16 + vector dims)


class Encoder(nn.Module):
    """Observation dict -> SimNorm latent. (N, ...) -> (N, latent_dim).

    Vector fields only: concatenated into one MLP input (the official state encoder). One 64x64
    image field only: `PixelEncoder` (the official ``rgb`` encoder). Images with vector fields
    (or several images): `FusedEncoder`.
    """

    def __init__(self, spec: ObsSpec, enc_dim: int, layers: int, latent_dim: int, group: int,
                 channels: int, pad: int) -> None:  # fmt: skip
        super().__init__()
        self.spec = spec
        self.image_key: str | None = None
        self.fused = False
        images = spec.image_keys
        if len(images) == 1 and len(spec.fields) == 1:
            self.image_key = images[0]
            field = spec.fields[self.image_key]
            c, h, w = field.chw
            if (h, w) != (64, 64):
                raise SpecError(f"obs_space: the TD-MPC2 pixel encoder expects 64x64, got {h}x{w}")
            self.net: nn.Module = PixelEncoder(c, channels, latent_dim, group, pad)
        elif images:
            self.fused = True
            self.net = FusedEncoder(spec, enc_dim, layers, latent_dim, group, channels, pad)
        else:
            obs_dim = sum(spec.fields[k].size for k in spec.vector_keys)
            hidden = max(layers - 1, 1) * [enc_dim]
            self.net = mlp(obs_dim, hidden, latent_dim, final=SimNorm(group))

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        if self.fused:
            return self.net(obs)
        if self.image_key is not None:
            x = obs[self.image_key]
            if self.spec.fields[self.image_key].channels_last:
                x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
            return self.net(x)
        dtype = next(self.net.parameters()).dtype  # a float64 model runs in float64
        x = torch.cat([obs[k].to(dtype) for k in self.spec.vector_keys], -1)  # (N, sum of dims)
        return self.net(x)


def squashed_gaussian(out: Tensor, log_std_min: float, log_std_max: float, sample: bool):
    """Tanh-squashed Gaussian from (..., 2A) net output -> (action (..., A), info); the action
    is a sample, or the mean (no noise drawn) when not `sample`.

    info: ``mean`` (tanh of the mean), ``log_std``, ``entropy`` (-log pi) and ``scaled_entropy``
    (the official rescaling: the entropy term weighted by the action dimension).
    """
    mu, raw = out.chunk(2, dim=-1)
    log_std = log_std_min + 0.5 * (log_std_max - log_std_min) * (torch.tanh(raw) + 1)
    eps = torch.randn_like(mu) if sample else torch.zeros_like(mu)
    log_prob = (-0.5 * eps.pow(2) - log_std - _LOG_SQRT_2PI).sum(-1, keepdim=True)  # (..., 1)
    scaled_log_prob = log_prob * mu.shape[-1]
    action = torch.tanh(mu + eps * log_std.exp())
    log_prob = log_prob - torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1, keepdim=True)
    entropy_scale = scaled_log_prob / (log_prob + 1e-8)
    info = {
        "mean": torch.tanh(mu),
        "log_std": log_std,
        "entropy": -log_prob,
        "scaled_entropy": -log_prob * entropy_scale,
    }
    return action, info


def categorical(logits: Tensor, sample: bool, groups: tuple[int, ...] | None = None):
    """Categorical policy over A choices, or one per group of `groups` (sizes summing to A, a
    MultiDiscrete action) -> (one-hot action (..., A), one 1 per group; info).

    Samples by Gumbel-max (the argmax when not `sample`); the action carries a straight-through
    gradient (one-hot forward, softmax backward). ``entropy`` is summed over the groups and
    ``scaled_entropy`` is it times A, mirroring the continuous case (entropy times dims).
    """
    sizes = groups or (logits.shape[-1],)
    log_p = group_log_softmax(logits, sizes)
    probs = log_p.exp()
    noisy = logits - torch.empty_like(logits).exponential_().log() if sample else logits
    hard = group_one_hot(noisy, sizes)
    action = hard + probs - probs.detach()
    entropy = group_sum(-(probs * log_p), sizes).sum(-1, keepdim=True)  # (..., G) -> (..., 1)
    mean = group_one_hot(logits, sizes)
    info = {"mean": mean, "logits": logits, "entropy": entropy,
            "scaled_entropy": entropy * logits.shape[-1]}  # fmt: skip
    return action, info


class RunningScale(nn.Module):
    """Running 5th-95th percentile range of Q (EMA `tau`, floor 1); divides Q by it."""

    def __init__(self, tau: float) -> None:
        super().__init__()
        self.tau = tau
        self.value: Tensor
        self.pcts: Tensor
        self.register_buffer("value", torch.ones(1))
        self.register_buffer("pcts", torch.tensor([0.05, 0.95]))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """x (N, ...) -> per-column percentiles over N; the scale moves toward their range."""
        # quantile needs at least float32 (no half types); float64 stays float64
        dtype = torch.promote_types(x.dtype, torch.float32)
        pct = torch.quantile(x.detach().to(dtype).flatten(1), self.pcts.to(dtype), dim=0)
        scale = (pct[1] - pct[0]).clamp_min(1.0).reshape(-1)[:1]  # pct: (2, cols)
        self.value.lerp_(scale.to(self.value.dtype), self.tau)

    def forward(self, x: Tensor) -> Tensor:
        return x / self.value

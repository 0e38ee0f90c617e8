"""Observation encoder: a small CNN per image field, an MLP for vector fields, -> rep (B, D)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldflux.core.exceptions import SpecError
from worldflux.core.spec import FieldSpec, ObsSpec
from worldflux.nn.mlp import MLP


class ConvStack(nn.Module):
    """`stages` stride-2 4x4 convs (channels depth, 2*depth, ...), GroupNorm(1) + SiLU, flattened.

    (B, C, H, W) float -> (B, F) with F = last_channels * (H / 2^stages) * (W / 2^stages).
    """

    def __init__(self, field: FieldSpec, depth: int, stages: int) -> None:
        super().__init__()
        c, h, w = field.chw
        if h % (2**stages) or w % (2**stages):
            raise SpecError(
                f"obs image: expected H and W divisible by 2**cnn_stages={2**stages}, got {(h, w)}"
            )
        layers: list[nn.Module] = []
        for i in range(stages):
            out = depth * 2**i
            layers += [nn.Conv2d(c, out, 4, 2, 1), nn.GroupNorm(1, out), nn.SiLU()]
            c = out
        self.net = nn.Sequential(*layers)
        self.out_dim = c * (h // 2**stages) * (w // 2**stages)
        self.channels_last = field.channels_last

    def forward(self, img: Tensor) -> Tensor:
        dtype = next(self.net.parameters()).dtype
        x = img.to(dtype) / 255.0 - 0.5  # uint8 -> the weights' dtype
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
        return self.net(x).flatten(1)  # (B, C', H', W') -> (B, F)


class Encoder(nn.Module):
    """obs dict {key: (B, *field_shape)} -> rep (B, rep_dim).

    With `batch_norm` the output passes a BatchNorm1d without affine parameters (LeWM's projector
    ends in BatchNorm): every dimension starts with unit spread across samples, where SIGReg's
    gradient is informative; near collapse the Epps-Pulley gradient vanishes.
    """

    def __init__(
        self,
        obs_spec: ObsSpec,
        rep_dim: int,
        depth: int,
        stages: int,
        hidden: int,
        layers: int,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.image_keys, self.vector_keys = obs_spec.image_keys, obs_spec.vector_keys
        self.convs = nn.ModuleDict(
            {k: ConvStack(obs_spec.fields[k], depth, stages) for k in self.image_keys}
        )
        vec_dim = sum(obs_spec.fields[k].size for k in self.vector_keys)
        self.vec = MLP(vec_dim, hidden, None, 1) if vec_dim else None
        feat = sum(c.out_dim for c in self.convs.values())  # type: ignore[misc]
        feat += self.vec.out_dim if self.vec is not None else 0
        self.head = MLP(feat, hidden, rep_dim, layers)
        self.rep_dim = rep_dim
        self.norm = nn.BatchNorm1d(rep_dim, affine=False) if batch_norm else None

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        return self.forward_with_prenorm(obs)[0]

    def forward_with_prenorm(self, obs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """-> rep (B, D) and the head's output before the BatchNorm (B, D) (the same tensor
        without `batch_norm`). In train mode BatchNorm pins each dim's std of `rep` near 1, so
        only the pre-norm features show a collapse."""
        parts = [self.convs[k](obs[k]) for k in self.image_keys]
        if self.vec is not None:
            vec = torch.cat([obs[k].flatten(1) for k in self.vector_keys], -1)  # (B, sum F_k)
            parts.append(self.vec(vec.to(self.vec_dtype)))
        pre = self.head(torch.cat(parts, -1))  # (B, F) -> (B, D)
        if self.norm is None:
            return pre, pre
        n = self.norm
        use_batch = self.training and pre.shape[0] > 1  # a single sample uses running stats
        rep = F.batch_norm(
            pre, n.running_mean, n.running_var, training=use_batch, momentum=0.1, eps=n.eps
        )
        return rep, pre

    @property
    def vec_dtype(self) -> torch.dtype:
        assert self.vec is not None
        return next(self.vec.parameters()).dtype

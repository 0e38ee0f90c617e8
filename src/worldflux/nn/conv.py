"""Config-free convolutional stacks for 2^k-downsampling image encoders and their decoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldflux.nn.blocks import ChannelNorm, trunc_normal_fan_in_
from worldflux.nn.mlp import make_act


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2)
    trunc_normal_fan_in_(conv.weight, cin * kernel * kernel, scale)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class ConvDown(nn.Module):
    """Conv -> (2x2 max-pool) -> ChannelNorm -> act per depth; each stage halves H and W.

    (N, in_channels, H, W) -> (N, depths[-1], H / 2^k, W / 2^k) with k = len(depths).
    `strided=False` uses a stride-1 conv then a 2x2 max-pool (DreamerV3, current code);
    `strided=True` a stride-2 conv (4x fewer FLOPs, DreamerV1-3 paper versions).
    """

    def __init__(
        self,
        in_channels: int,
        depths: tuple[int, ...],
        kernel: int = 5,
        norm: str = "rms",
        act: str = "silu",
        strided: bool = False,
    ) -> None:
        super().__init__()
        self.strided = strided
        chans = (in_channels, *depths)
        self.convs = nn.ModuleList(
            _conv(chans[i], chans[i + 1], kernel, 2 if strided else 1) for i in range(len(depths))
        )
        self.norms = nn.ModuleList(ChannelNorm(d, norm) for d in depths)
        self.act = make_act(act)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's fast layout on CPU
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = conv(x)
            if not self.strided:
                x = F.max_pool2d(x, 2)
            x = self.act(norm(x))
        return x


class ConvUp(nn.Module):
    """Mirror of `ConvDown`: (nearest 2x upsample -> conv -> norm -> act) per depth, then an
    upsampling output conv without norm.

    (N, depths[-1], h, w) -> (N, out_channels, h * 2^k, w * 2^k), k = len(depths). `depths` are
    the encoder's, given in encoder order; the output conv's init is scaled by `outscale`.
    """

    def __init__(
        self,
        out_channels: int,
        depths: tuple[int, ...],
        kernel: int = 5,
        norm: str = "rms",
        act: str = "silu",
        strided: bool = False,
        outscale: float = 1.0,
    ) -> None:
        super().__init__()
        self.strided = strided
        # channel path: depths[-1] -> depths[-2] -> ... -> depths[0] -> out_channels
        rev = tuple(reversed(depths))
        pairs = list(zip(rev[:-1], rev[1:], strict=True))
        self.convs = nn.ModuleList(self._up(cin, cout, kernel, 1.0) for cin, cout in pairs)
        self.norms = nn.ModuleList(ChannelNorm(cout, norm) for _, cout in pairs)
        self.out = self._up(rev[-1], out_channels, kernel, outscale)
        self.act = make_act(act)

    def _up(self, cin: int, cout: int, kernel: int, scale: float) -> nn.Module:
        if not self.strided:
            return _conv(cin, cout, kernel, 1, scale)
        conv = nn.ConvTranspose2d(cin, cout, kernel, 2, kernel // 2, output_padding=1)
        trunc_normal_fan_in_(conv.weight, cin * kernel * kernel, scale)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        return conv

    def _upconv(self, conv: nn.Module, x: Tensor) -> Tensor:
        if not self.strided:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return conv(x)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's fast layout on CPU
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = self.act(norm(self._upconv(conv, x)))
        return self._upconv(self.out, x)

"""Config-free MLP blocks: Linear -> Norm -> Activation, repeated."""

from __future__ import annotations

from torch import Tensor, nn

_ACTS = {"silu": nn.SiLU, "mish": nn.Mish, "elu": nn.ELU, "relu": nn.ReLU, "gelu": nn.GELU}


def make_norm(kind: str | None, dim: int, eps: float = 1e-5) -> nn.Module:
    """'layer' (LayerNorm), 'rms' (RMSNorm) or None (identity)."""
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rms":
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"norm: expected 'layer', 'rms' or None, got {kind!r}")


def make_act(kind: str) -> nn.Module:
    """An activation module by name (silu, mish, elu, relu, gelu)."""
    if kind not in _ACTS:
        raise ValueError(f"act: expected one of {sorted(_ACTS)}, got {kind!r}")
    return _ACTS[kind]()


class NormedLinear(nn.Sequential):
    """Linear -> Norm -> Activation, with optional dropout first.

    The Linear keeps its bias even when a norm follows: without it ``norm(W x)`` is invariant to
    the scale of ``x`` (RMSNorm and LayerNorm both divide it out), so inputs on one ray from the
    origin, such as (0.1, 0.2) and (0.3, 0.6), would map to the same features. The official
    DreamerV3 ``Linear`` has a bias too.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        norm: str | None = "layer",
        act: str = "silu",
        dropout: float = 0.0,
    ) -> None:
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        layers += [nn.Linear(in_dim, out_dim)]
        layers += [make_norm(norm, out_dim), make_act(act)]
        super().__init__(*layers)


class MLP(nn.Module):
    """`layers` hidden NormedLinear blocks of width `hidden`, then a plain Linear to `out_dim`.

    (..., in_dim) -> (..., out_dim). `out_dim=None` returns the last hidden features instead.
    `dropout` applies to the first hidden layer only (TD-MPC2's Q functions).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int | None,
        layers: int,
        norm: str | None = "layer",
        act: str = "silu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        blocks = [
            NormedLinear(
                in_dim if i == 0 else hidden, hidden, norm, act, dropout if i == 0 else 0.0
            )
            for i in range(layers)
        ]
        self.trunk = nn.Sequential(*blocks)
        last = hidden if layers > 0 else in_dim
        self.head: nn.Module = nn.Linear(last, out_dim) if out_dim is not None else nn.Identity()
        self.out_dim = out_dim if out_dim is not None else last

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))

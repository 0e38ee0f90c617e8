"""Config-free building blocks: math helpers, MLPs, norms."""

from worldflux.nn.functional import (
    simnorm,
    soft_cross_entropy,
    symexp,
    symlog,
    two_hot,
    two_hot_mean,
    unimix,
)

__all__ = [
    "simnorm",
    "soft_cross_entropy",
    "symexp",
    "symlog",
    "two_hot",
    "two_hot_mean",
    "unimix",
]

from worldflux.nn.mlp import MLP, NormedLinear, make_act, make_norm  # noqa: E402

__all__ += ["MLP", "NormedLinear", "make_act", "make_norm"]

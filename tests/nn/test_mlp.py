"""Config-free MLP blocks."""

from __future__ import annotations

import pytest
import torch

from worldflux.nn import MLP


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_normed_layers_see_the_scale_of_their_input(norm: str) -> None:
    """norm(W x) alone divides the scale of x out: points on one ray from the origin would get
    the same features. The bias before the norm keeps them apart."""
    torch.manual_seed(0)
    mlp = MLP(2, 32, None, 1, norm=norm)
    for layer in mlp.modules():
        if isinstance(layer, torch.nn.Linear) and layer.bias is not None:
            torch.nn.init.normal_(layer.bias)  # a trained bias; zero at initialisation
    x = torch.tensor([[0.1, 0.2], [0.3, 0.6], [0.5, 1.0]])
    out = mlp(x)
    assert (out[0] - out[1]).abs().max() > 1e-2
    assert (out[1] - out[2]).abs().max() > 1e-2

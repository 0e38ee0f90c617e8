"""Action-conditioned latent predictor: (rep history (B, k, D), action (B, A)) -> next rep (B, D).

Two ways to condition on the action: ``concat`` feeds [history, action] to the input layer;
``adaln`` (DiT / V-JEPA 2-AC / LeWM style) modulates every residual block's LayerNorm with a shift,
scale and gate computed from the action, zero-initialised so each block starts as the identity.
The predictor outputs a residual added to the most recent rep.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from worldflux.core.exceptions import SpecError


class Block(nn.Module):
    """Pre-norm residual MLP block; modulated: x + g * W2 silu(W1 (LN(x) (1 + s) + b))."""

    def __init__(self, hidden: int, cond_dim: int | None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=cond_dim is None)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.mod: nn.Linear | None = None
        if cond_dim is not None:
            self.mod = nn.Linear(cond_dim, 3 * hidden)
            nn.init.zeros_(self.mod.weight)
            nn.init.zeros_(self.mod.bias)

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        h = self.norm(x)
        if self.mod is None or cond is None:
            return x + self.mlp(h)
        shift, scale, gate = self.mod(cond).chunk(3, -1)  # (B, 3*hidden) -> 3 x (B, hidden)
        return x + gate * self.mlp(h * (1 + scale) + shift)


class Predictor(nn.Module):
    """Next-rep predictor with a history of `history` reps; see the module docstring."""

    def __init__(
        self,
        rep_dim: int,
        action_dim: int,
        hidden: int,
        layers: int,
        history: int,
        conditioning: str,
    ) -> None:
        super().__init__()
        self.rep_dim, self.action_dim, self.history = rep_dim, action_dim, history
        self.adaln = conditioning == "adaln"
        in_dim = history * rep_dim + (0 if self.adaln else action_dim)
        self.inp = nn.Linear(in_dim, hidden)
        self.act_embed = (
            nn.Sequential(nn.Linear(action_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            if self.adaln
            else None
        )
        cond_dim = hidden if self.adaln else None
        self.blocks = nn.ModuleList(Block(hidden, cond_dim) for _ in range(layers))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, rep_dim)
        nn.init.zeros_(self.out.weight)  # start as "the rep does not change"
        nn.init.zeros_(self.out.bias)

    def forward(self, history: Tensor, action: Tensor) -> Tensor:
        """history (B, k, D) oldest first, action (B, A) -> next rep (B, D)."""
        b = history.shape[0]
        if history.shape[1:] != (self.history, self.rep_dim):
            raise SpecError(
                f"history: expected (B, {self.history}, {self.rep_dim}), got {tuple(history.shape)}"
            )
        if action.shape != (b, self.action_dim):
            raise SpecError(f"action: expected ({b}, {self.action_dim}), got {tuple(action.shape)}")
        flat = history.reshape(b, -1)  # (B, k, D) -> (B, k*D)
        if self.act_embed is None:
            x, cond = self.inp(torch.cat([flat, action], -1)), None
        else:
            x, cond = self.inp(flat), self.act_embed(action)
        for block in self.blocks:
            x = block(x, cond)
        return history[:, -1] + self.out(self.out_norm(x))

"""An ensemble of E identical MLPs with stacked weights, evaluated in one batched call.

Each member is ``[Linear -> Dropout (first layer only) -> LayerNorm -> act] x len(hidden)`` then a
plain ``Linear``: the block of TD-MPC2's Q functions (Hansen et al. 2024,
nicklashansen/tdmpc2 ``common/layers.py``: ``NormedLinear`` and ``mlp``). There is no Python loop
over members: the first layer (whose input is shared) is one GEMM against the members' weights laid
side by side, and every later layer is one ``baddbmm`` over the member dimension.

The forward pass is a pure function of a parameter list (`ensemble_forward`), so the same code
evaluates the live weights, detached copies (a frozen critic) or EMA target weights held as
buffers, and any subset of members (indexing the stacked weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldflux.core.exceptions import ConfigError, SpecError


class _Mish(torch.autograd.Function):
    """Mish in closed form: x * tanh(softplus(x)) = x - 2x / ((e^x + 1)^2 + 1).

    Five plain element-wise passes instead of ``F.mish``'s transcendental kernel: 3.4x faster
    on a cache-resident tensor, and what planning (no gradient) runs on. With a gradient the
    backward is ATen's ``mish_backward`` and only x is saved: a closed-form backward measured
    2x faster in isolation but no faster inside a training step (memory bound, three saved
    tensors). Matches ``F.mish`` within 2e-6; e^x = inf gives exactly x.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x)
        d = x.exp().add_(1).square_().add_(1)
        return torch.addcdiv(x, x, d, value=-2.0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.mish_backward(grad, x)


def mish(x: Tensor) -> Tensor:
    """x * tanh(softplus(x)), fast on CPU (see `_Mish`)."""
    out = _Mish.apply(x)
    assert isinstance(out, Tensor)
    return out


class Mish(nn.Module):
    """Module form of the fast `mish`."""

    def forward(self, x: Tensor) -> Tensor:
        return mish(x)


_ACTS: dict[str, Callable[[Tensor], Tensor]] = {
    "mish": mish,
    "silu": F.silu,
    "relu": F.relu,
    "elu": F.elu,
    "gelu": F.gelu,
}


def _dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout; on CPU with small p, drawn sparsely (same distribution as F.dropout).

    Dropped positions form a Bernoulli(p) process, generated from geometric gaps: about
    n * p random numbers instead of n, then one scaling pass (F.dropout's per-element RNG
    dominates its cost on CPU). Other devices, or p > 0.05, use ``F.dropout``. Under
    torch.compile the same positions become a dense keep-mask (static shapes, no sync); in
    eager mode the sparse zeroing is ~3x faster than the mask, and both give the same values.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p > 0.05 or not x.is_contiguous():
        return F.dropout(x, p, True)
    n, scale = x.numel(), 1.0 / (1.0 - p)
    drop = _drop_positions(n, p)
    if torch.compiler.is_compiling():
        keep = torch.ones(n + 1, dtype=torch.bool).index_fill_(0, drop.clamp(max=n), False)
        return torch.where(keep[:n].view(x.shape), x * scale, 0.0)  # slot n: beyond the end
    out = _MaskedScale.apply(x, drop[drop < n], scale)
    assert isinstance(out, Tensor)
    return out


def _drop_positions(n: int, p: float) -> Tensor:
    """Sorted flat positions of a Bernoulli(p) process over n elements; the last lies >= n.

    Positions are cumulative Geometric(p) gaps, drawn in chunks sized so that one chunk almost
    always reaches n: eager mode draws another chunk when it does not; compiled code takes the
    single chunk (static shape), where the tail beyond it (probability < 1e-9) is not dropped.
    """
    mean = n * p
    chunk = int(mean + 6.0 * math.sqrt(mean) + 16)
    log_keep = math.log1p(-p)
    found, last = [], -1
    while last < n:
        gaps = (torch.log1p(-torch.rand(chunk)) / log_keep).floor_().long() + 1  # Geometric(p)
        pos = gaps.cumsum_(0).add_(last)
        found.append(pos)
        if torch.compiler.is_compiling():
            break
        last = int(pos[-1])
    return torch.cat(found)


class _MaskedScale(torch.autograd.Function):
    """x * scale with the flat positions `drop` zeroed; the gradient is masked the same way."""

    @staticmethod
    def forward(ctx, x: Tensor, drop: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(drop)
        ctx.scale = scale
        out = x * scale
        out.view(-1).index_fill_(0, drop, 0.0)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (drop,) = ctx.saved_tensors
        out = (grad * ctx.scale).contiguous()  # contiguous already unless grad is odd-strided
        out.view(-1).index_fill_(0, drop, 0.0)
        return out, None, None


class EnsembleMLP(nn.Module):
    """E MLPs with stacked weights. (..., in_dim) -> (E, ..., out_dim).

    Parameters per layer i: ``w{i}`` (E, d_in, d_out), except ``w0`` which is laid out
    (d_in, E, d_out) so the shared-input first layer is one GEMM without copying weights;
    ``b{i}`` (E, d_out); LayerNorm ``g{i}``/``s{i}`` (E, d_out) for hidden layers. Linear weights
    are truncated normal (std 0.02) with zero biases; `zero_last` zeroes the output weights
    (TD-MPC2's Q init). `member_weight(i, e)` returns member e's (d_in, d_out) weight.
    """

    def __init__(
        self,
        members: int,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        act: str = "mish",
        dropout: float = 0.0,
        zero_last: bool = False,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if members < 1 or in_dim < 1 or out_dim < 1 or any(h < 1 for h in hidden):
            raise ConfigError(
                f"EnsembleMLP: members, in_dim, hidden and out_dim must be >= 1, got "
                f"{members}, {in_dim}, {list(hidden)}, {out_dim}"
            )
        if act not in _ACTS:
            raise ConfigError(f"act: expected one of {sorted(_ACTS)}, got {act!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout: expected in [0, 1), got {dropout}")
        self.members, self.in_dim, self.out_dim = members, in_dim, out_dim
        self.hidden = tuple(hidden)
        self.act, self.dropout, self.eps = act, dropout, eps
        dims = [in_dim, *hidden, out_dim]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            w = torch.empty(members, d_in, d_out)
            nn.init.trunc_normal_(w, std=0.02)
            if zero_last and i == len(hidden):
                w.zero_()
            if i == 0:
                w = w.transpose(0, 1).contiguous()  # (E, d_in, d_out) -> (d_in, E, d_out)
            self.register_parameter(f"w{i}", nn.Parameter(w))
            self.register_parameter(f"b{i}", nn.Parameter(torch.zeros(members, d_out)))
            if i < len(hidden):
                self.register_parameter(f"g{i}", nn.Parameter(torch.ones(members, d_out)))
                self.register_parameter(f"s{i}", nn.Parameter(torch.zeros(members, d_out)))

    def member_weight(self, layer: int, member: int) -> Tensor:
        """Member `member`'s weight of layer `layer`: (d_in, d_out)."""
        w = getattr(self, f"w{layer}")
        return w[:, member] if layer == 0 else w[member]

    def param_list(self) -> list[Tensor]:
        """The parameters in the order `ensemble_forward` expects."""
        return list(self.parameters())

    def forward(
        self,
        x: Tensor,
        params: Sequence[Tensor] | None = None,
        members: Tensor | None = None,
        training: bool | None = None,
    ) -> Tensor:
        """(..., in_dim) -> (E', ..., out_dim) with E' = E or len(members).

        `params` replaces the module's own weights (e.g. detached or target copies); `members`
        (long indices) evaluates only those members; `training` overrides the module's mode for
        dropout (target networks pass False).
        """
        p = self.param_list() if params is None else list(params)
        if members is not None:
            p = [t.index_select(1 if i == 0 else 0, members) for i, t in enumerate(p)]
        return ensemble_forward(
            x,
            p,
            len(self.hidden),
            self.act,
            self.dropout,
            self.training if training is None else training,
            self.eps,
        )


def ensemble_forward(
    x: Tensor,
    params: Sequence[Tensor],
    layers: int,
    act: str = "mish",
    dropout: float = 0.0,
    training: bool = False,
    eps: float = 1e-5,
) -> Tensor:
    """Evaluate stacked-weight MLPs on a shared input. (..., d) -> (E, ..., out).

    `params` is ``[w0, b0, g0, s0, ..., w{L}, b{L}]`` as laid out by `EnsembleMLP`.
    """
    if len(params) != 4 * layers + 2:
        raise SpecError(f"params: expected {4 * layers + 2} tensors, got {len(params)}")
    w0 = params[0]
    d_in, e, d_out = w0.shape
    if x.shape[-1] != d_in:
        raise SpecError(f"x: expected last dim {d_in}, got {tuple(x.shape)}")
    lead = x.shape[:-1]
    flat = x.reshape(-1, d_in)  # (..., d) -> (N, d)
    n = flat.shape[0]
    fn = _ACTS[act]
    # shared input: one GEMM against all members' weights side by side
    h = torch.addmm(params[1].reshape(e * d_out), flat, w0.reshape(d_in, e * d_out))
    h = h.view(n, e, d_out)  # (N, E*o) -> (N, E, o): members side by side, still contiguous
    if layers == 0:
        return h.transpose(0, 1).reshape(e, *lead, d_out)  # (N, E, o) -> (E, ..., o)
    for i in range(layers):
        g, s = params[4 * i + 2], params[4 * i + 3]
        if i == 0:
            h = _dropout(h, dropout, training)
            h = F.layer_norm(h, (d_out,), eps=eps)
            h = fn(torch.addcmul(s, h, g))  # (N, E, o) * (E, o): per-member affine
            h = h.transpose(0, 1)  # (N, E, o) -> (E, N, o), a strided view for bmm
        else:
            h = F.layer_norm(h, (h.shape[-1],), eps=eps)
            h = fn(torch.addcmul(s[:, None], h, g[:, None]))
        w, b = params[4 * (i + 1)], params[4 * (i + 1) + 1]
        h = torch.baddbmm(b[:, None], h, w)  # (E, N, d) @ (E, d, o) -> (E, N, o)
    return h.reshape(e, *lead, h.shape[-1])  # (E, N, o) -> (E, ..., o)

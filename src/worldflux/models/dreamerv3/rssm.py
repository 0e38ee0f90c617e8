"""The DreamerV3 RSSM: block-GRU deterministic core plus 32 categorical latents.

Follows the current official code (danijar/dreamerv3 ``dreamerv3/rssm.py``, class ``RSSM``):
the core embeds deter, stoch and action separately (Linear -> Norm -> SiLU each), mixes them
into every GRU block through one hidden block layer, and updates the GRU with
``update = sigmoid(u - 1)``, ``cand = tanh(sigmoid(r) * c)``. The prior is an MLP on ``deter``
(2 hidden layers), the posterior one hidden layer on ``[deter, tokens]``. Latents are unimix
categoricals (1% uniform) sampled with straight-through gradients.

Shapes: N a flat batch, B x T a sequence batch, D = deter, S = stoch, C = classes, E = tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from worldflux.models.dreamerv3.config import DreamerV3Config
from worldflux.nn.blocks import BlockLinear, init_linear_, trunc_normal_fan_in_
from worldflux.nn.distributions import (
    categorical_kl,
    sample_onehot,
    straight_through,
    unimix_logp,
)
from worldflux.nn.mlp import MLP, make_act, make_norm

M = TypeVar("M", bound=nn.Module)


def init_linears_(module: M) -> M:
    """Fan-in truncated-normal init for every nn.Linear inside `module`; returns it."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            init_linear_(m)
    return module


def grad_leaf(x: Tensor) -> Tensor:
    """`x` as is if it requires grad, else a leaf alias of it that does (same values)."""
    return x if x.requires_grad else x.detach().requires_grad_()


class RSSM(nn.Module):
    """Recurrent state-space model. Carries ``deter`` (N, D) and flat ``stoch`` (N, S*C)."""

    def __init__(self, cfg: DreamerV3Config, action_dim: int, token_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        D, Hd, S, C, G = cfg.deter, cfg.hidden, cfg.stoch, cfg.classes, cfg.blocks
        self.inputs = nn.ModuleList(
            [nn.Linear(D, Hd), nn.Linear(S * C, Hd), nn.Linear(action_dim, Hd)]
        )
        self.input_norms = nn.ModuleList(make_norm(cfg.norm, Hd) for _ in range(3))
        self.act = make_act(cfg.act)
        # The official hidden block layer reads [deter_g, x] per block g (x shared by all blocks).
        # Split into a block-diagonal part on deter plus a dense part on x: the same function and
        # parameter count, without materialising G copies of x.
        self.hid_deter = BlockLinear(D, D, G, bias=False)
        self.hid_x = nn.Linear(3 * Hd, D)
        self.hid_norm = make_norm(cfg.norm, D)
        self.gru = BlockLinear(D, 3 * D, G)
        self.prior = MLP(D, Hd, S * C, cfg.imglayers, cfg.norm, cfg.act)
        self.post_deter = nn.Linear(D, Hd, bias=False)  # together with post_tok: Linear([d, e])
        self.post_tok = nn.Linear(token_dim, Hd)
        self.post_norm = make_norm(cfg.norm, Hd)
        self.post_out = nn.Linear(Hd, S * C)
        init_linears_(self)
        self.compiled = False  # set by `compile_regions`
        fan_in = D // G + 3 * Hd  # the official layer's fan-in for both halves
        trunc_normal_fan_in_(self.hid_deter.weight, fan_in)
        trunc_normal_fan_in_(self.hid_x.weight, fan_in)
        for lin, fan in ((self.post_deter, D + token_dim), (self.post_tok, D + token_dim)):
            trunc_normal_fan_in_(lin.weight, fan)

    def initial(self, batch_size: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """Zero carry: deter (N, D), stoch (N, S*C) (official ``RSSM.initial``)."""
        cfg, dtype = self.cfg, self.hid_x.weight.dtype
        deter = torch.zeros(batch_size, cfg.deter, device=device, dtype=dtype)
        return deter, torch.zeros(batch_size, cfg.stoch * cfg.classes, device=device, dtype=dtype)

    def embed_action(self, action: Tensor) -> Tensor:
        """Action branch of the core: a / max(1, |a|) -> Linear -> Norm -> act. (.., A) -> (.., Hd)

        Depends on the action only, so `observe` runs it for the whole sequence at once.
        """
        action = action / action.detach().abs().clamp(min=1.0)
        return self.act(self.input_norms[2](self.inputs[2](action)))

    def core(
        self, deter: Tensor, stoch: Tensor, action: Tensor, action_emb: Tensor | None = None
    ) -> Tensor:
        """Block-GRU step. deter (N, D), stoch (N, S*C), action (N, A) -> deter (N, D).

        `action_emb` (N, Hd), if given, is `embed_action(action)` computed beforehand. The block
        layers run group-major, (G, N, D/G), so each is one batched matmul.
        """
        N, D, G = deter.shape[0], self.cfg.deter, self.cfg.blocks
        xs = [
            self.act(norm(lin(x)))
            for lin, norm, x in zip(
                self.inputs[:2], self.input_norms[:2], (deter, stoch), strict=True
            )
        ]
        xs.append(self.embed_action(action) if action_emb is None else action_emb)
        d_g = deter.view(N, G, D // G).transpose(0, 1)  # (N, D) -> (G, N, D/G) view
        x_g = self.hid_x(torch.cat(xs, -1)).view(N, G, D // G).transpose(0, 1)
        x = self.hid_deter.grouped(d_g.contiguous(), add=x_g)  # (G, N, D/G)
        x = self.act(self.hid_norm(x.transpose(0, 1).reshape(N, D)))  # norm over all of D
        gates = self.gru.grouped(x.view(N, G, D // G).transpose(0, 1).contiguous())
        reset, cand, update = gates.split(D // G, -1)  # (G, N, 3D/G) -> 3 x (G, N, D/G)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1.0)
        # the state keeps its dtype (fp32 under bf16 autocast, whose matmuls give bf16 gates)
        new = torch.lerp(d_g, cand.to(d_g.dtype), update.to(d_g.dtype))  # u*cand + (1-u)*deter
        return new.transpose(0, 1).reshape(N, D)  # (G, N, D/G) -> (N, D)

    def _dist(self, logits: Tensor) -> Tensor:
        """Unimix log-probs. (..., S*C) -> (..., S, C)."""
        logits = logits.view(*logits.shape[:-1], self.cfg.stoch, self.cfg.classes)
        return unimix_logp(logits, self.cfg.unimix)

    def prior_logp(self, deter: Tensor) -> Tensor:
        """Prior log-probs. deter (..., D) -> (..., S, C)."""
        return self._dist(self.prior(deter))

    def post_logp(self, deter: Tensor, tok: Tensor) -> Tensor:
        """Posterior log-probs from deter (N, D) and `post_tok(tokens)` (N, Hd) -> (N, S, C)."""
        x = self.act(self.post_norm(self.post_deter(deter) + tok))
        return self._dist(self.post_out(x))

    @staticmethod
    def sample(logp: Tensor) -> Tensor:
        """Straight-through one-hot sample, flattened. (N, S, C) -> (N, S*C)."""
        return straight_through(sample_onehot(logp), logp).flatten(-2)

    def img_step(self, deter: Tensor, stoch: Tensor, action: Tensor) -> tuple[Tensor, ...]:
        """Imagine one step: -> deter (N, D), stoch (N, S*C), prior log-probs (N, S, C)."""
        deter = self.core(deter, stoch, action)
        logp = self.prior_logp(deter)
        return deter, self.sample(logp), logp

    def obs_step(
        self, deter: Tensor, stoch: Tensor, action: Tensor, tokens: Tensor
    ) -> tuple[Tensor, ...]:
        """Filter one step: -> deter (N, D), stoch (N, S*C), posterior log-probs (N, S, C)."""
        deter = self.core(deter, stoch, action)
        logp = self.post_logp(deter, self.post_tok(tokens))
        return deter, self.sample(logp), logp

    def observe(
        self,
        tokens: Tensor,
        actions: Tensor,
        is_first: Tensor,
        start: tuple[Tensor, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Posterior over a sequence. tokens (B, T, E), actions (B, T, A), is_first (B, T).

        The carry and the action are zeroed where ``is_first`` (a batched mask, as the official
        ``_observe``). Returns deter (B, T, D), stoch (B, T, S, C), post_logp and prior_logp
        (B, T, S, C); the prior is computed after the loop in one batched call. `observe_inputs`
        and `observe_step` (per t) are the regions that `compile_regions` compiles; the stacks
        and the prior stay eager (a region with 3T inputs costs more to build than it saves).
        """
        B, T = is_first.shape
        deter, stoch = start if start is not None else self.initial(B, tokens.device)
        if self.compiled and torch.is_grad_enabled():  # one compiled step for all T (see below)
            deter, stoch = grad_leaf(deter), grad_leaf(stoch)
        keep, actions, emb, tok = self.observe_inputs(tokens, actions, is_first)
        deters, stochs, logps = [], [], []
        for t in range(T):
            step = (keep[:, t], actions[:, t], emb[:, t], tok[:, t])  # (B, T, ..) -> (B, ..)
            deter, stoch, logp = self.observe_step(deter, stoch, *step)
            deters.append(deter)
            stochs.append(stoch)
            logps.append(logp)
        return self.observe_outputs(deters, stochs, logps)

    def observe_inputs(
        self, tokens: Tensor, actions: Tensor, is_first: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-sequence work hoisted out of the time loop: -> keep mask (B, T, 1), masked
        actions (B, T, A), action embeddings (B, T, Hd), `post_tok(tokens)` (B, T, Hd)."""
        keep = (~is_first).to(tokens.dtype).unsqueeze(-1)  # (B, T) -> (B, T, 1)
        actions = actions * keep
        emb = self.embed_action(actions)  # all steps at once: (B, T, A) -> (B, T, Hd)
        tok = self.post_tok(tokens)  # all steps at once: (B, T, E) -> (B, T, Hd)
        return keep, actions, emb, tok

    def observe_step(
        self, deter: Tensor, stoch: Tensor, keep: Tensor, action: Tensor, emb: Tensor, tok: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One step of `observe`: reset where ``keep`` (N, 1) is 0, core, posterior, sample.
        -> deter (N, D), stoch (N, S*C), posterior log-probs (N, S, C)."""
        deter, stoch = deter * keep, stoch * keep
        deter = self.core(deter, stoch, action, emb)
        logp = self.post_logp(deter, tok)
        return deter, self.sample(logp), logp

    def observe_outputs(
        self, deters: list[Tensor], stochs: list[Tensor], logps: list[Tensor]
    ) -> dict[str, Tensor]:
        """`observe`'s result from its T steps' outputs, plus the prior in one batched call."""
        deter_seq = torch.stack(deters, 1)  # T x (B, D) -> (B, T, D)
        B, T = deter_seq.shape[:2]
        S, C = self.cfg.stoch, self.cfg.classes
        return {
            "deter": deter_seq,
            "stoch": torch.stack(stochs, 1).view(B, T, S, C),  # (B, T, S*C) -> (B, T, S, C)
            "post_logp": torch.stack(logps, 1),
            "prior_logp": self.prior_logp(deter_seq),
        }

    def compile_regions(self, compile_fn: Callable[[Any], Any]) -> None:
        """Route `observe`'s two regions through `compile_fn` (e.g. `torch.compile`): the
        step is compiled once and called T times, instead of a graph of T unrolled copies.
        Each compiled region replaces its method on this instance only. Dynamo guards on
        ``requires_grad``: a carry without a graph makes the first step's carry a leaf that
        requires grad, as later steps' carries do, so the step does not compile twice."""
        self.compiled = True
        for name in ("observe_inputs", "observe_step"):
            setattr(self, name, compile_fn(getattr(self, name)))

    def kl_losses(self, post_logp: Tensor, prior_logp: Tensor) -> dict[str, Tensor]:
        """Dynamics and representation KL, each summed over latents and clipped below at
        ``free_nats`` (official ``RSSM.loss``). (..., S, C) -> {'dyn', 'rep'} (...)."""
        dyn = categorical_kl(post_logp.detach(), prior_logp).sum(-1)
        rep = categorical_kl(post_logp, prior_logp.detach()).sum(-1)
        free = self.cfg.free_nats
        return {"dyn": dyn.clamp(min=free), "rep": rep.clamp(min=free), "kl": dyn.detach()}

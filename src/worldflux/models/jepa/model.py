"""JEPA world model: encode observations to a representation and predict it forward in latent space.

State keys:
- ``rep`` (B, D): the encoder representation of the latest observation (or its prediction).
- ``rep_history`` (B, k, D), only when ``config.history = k > 1``: the last k reps, oldest first,
  ``rep_history[:, -1] == rep``. After `encode` the first rep fills every slot.

There is no pixel decoder and no reward or continue head: the model is trained purely by predicting
future representations (plus an anti-collapse regulariser) and is meant for goal-conditioned
planning in representation space (see `planning.GoalPlanner`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from worldflux.core.batch import Batch
from worldflux.core.exceptions import SpecError, StateError
from worldflux.core.model import Metrics, WorldModel
from worldflux.core.spec import ActionSpec, Obs, ObsSpec, same_device
from worldflux.core.state import State
from worldflux.models.jepa.config import JEPAConfig
from worldflux.models.jepa.encoder import Encoder
from worldflux.models.jepa.predictor import Predictor
from worldflux.models.jepa.regularizers import EMATarget, effective_rank, epps_pulley, vicreg

_MISSING_HEADS = {
    "obs": "JEPA has no pixel decoder (it predicts representations, not observations)",
    "reward": "JEPA has no reward head (plan towards a goal representation instead)",
    "continue": "JEPA has no continue head",
}


class JEPA(WorldModel):
    """Joint-embedding predictive world model (LeWM / PLDM / V-JEPA 2-AC style). See module doc."""

    family = "jepa"
    heads = ("rep",)

    def __init__(self, config: JEPAConfig, obs_spec: ObsSpec, action_spec: ActionSpec) -> None:
        super().__init__(config, obs_spec, action_spec)
        c = config
        self.encoder = Encoder(
            obs_spec,
            c.rep_dim,
            c.cnn_depth,
            c.cnn_stages,
            c.enc_hidden,
            c.enc_layers,
            c.enc_batch_norm,
        )
        self.predictor = Predictor(
            c.rep_dim, action_spec.dim, c.pred_hidden, c.pred_layers, c.history, c.conditioning
        )
        self.target = EMATarget(self.encoder, c.ema_decay) if c.regularizer == "ema" else None

    # --- representation helpers ---------------------------------------------------------------

    def embed(self, obs: Obs) -> Tensor:
        """Online encoder: obs (B, *obs_shape) -> rep (B, D)."""
        return self._embed(obs)

    def _embed(self, obs: Obs, batch: int | None = None) -> Tensor:
        return self.encoder(self.check_obs(obs, batch))

    def _embed_seq(self, obs: Obs, encoder: torch.nn.Module) -> Tensor:
        """obs (B, T, *obs_shape) -> reps (B, T, D)."""
        flat, (b, t) = self._flat_seq(obs)
        return encoder(flat).reshape(b, t, -1)  # (B*T, D) -> (B, T, D)

    def _embed_seq_prenorm(self, obs: Obs) -> tuple[Tensor, Tensor]:
        """Online encoder: obs (B, T, *obs_shape) -> reps (B, T, D) and the features before its
        final BatchNorm (B, T, D) (the reps themselves without BatchNorm)."""
        flat, (b, t) = self._flat_seq(obs)
        rep, pre = self.encoder.forward_with_prenorm(flat)
        return rep.reshape(b, t, -1), pre.reshape(b, t, -1)

    def _flat_seq(self, obs: Obs) -> tuple[dict[str, Tensor], tuple[int, int]]:
        """Checked obs (B, T, ...) flattened to {key: (B*T, ...)}, and (B, T)."""
        fields = self.check_obs(obs, arg="batch.obs", batch_dims=2)
        b, t = next(iter(fields.values())).shape[:2]
        return {k: v.flatten(0, 1) for k, v in fields.items()}, (int(b), int(t))

    def _make_state(self, history: Tensor) -> State:
        """history (B, k, D) -> State with `rep` (and `rep_history` when k > 1)."""
        tensors = {"rep": history[:, -1]}
        if self.config.history > 1:
            tensors["rep_history"] = history
        return State(tensors)

    def history_of(self, state: State) -> Tensor:
        """The predictor's input (B, k, D) from `state`; `StateError` if keys are missing,
        misshapen or on another device."""
        if not isinstance(state, State):
            raise StateError(f"state: expected a State, got {type(state).__name__}")
        rep = state.get("rep")
        if rep is None or rep.dim() != 2 or rep.shape[1] != self.config.rep_dim:
            got = None if rep is None else tuple(rep.shape)
            raise StateError(
                f"state: expected key 'rep' of shape (B, {self.config.rep_dim}), got {got} "
                f"(keys {sorted(state.tensors)})"
            )
        dev = self.device
        if rep.device != dev and not same_device(rep.device, dev):
            raise StateError(
                f"state['rep']: expected a tensor on the model's device {dev}, got {rep.device}"
            )
        if self.config.history == 1:
            return rep[:, None]
        hist = state.get("rep_history")
        want = (rep.shape[0], self.config.history, self.config.rep_dim)
        if hist is None or tuple(hist.shape) != want:
            got = None if hist is None else tuple(hist.shape)
            raise StateError(
                f"state: expected key 'rep_history' of shape {want}, got {got} "
                f"(keys {sorted(state.tensors)})"
            )
        return hist

    # --- the contract -------------------------------------------------------------------------

    def initial_state(self, batch_size: int) -> State:
        """All-zero reps (batch_size, D) (and history (batch_size, k, D))."""
        batch_size = self.check_batch_size(batch_size)
        shape = (batch_size, self.config.history, self.config.rep_dim)
        zeros = torch.zeros(shape, device=self.device, dtype=self.dtype)
        return self._make_state(zeros)

    def encode(self, obs: Obs) -> State:
        """obs (B, *obs_shape) -> State with rep (B, D); the history is filled with it."""
        rep = self.embed(obs)
        return self._make_state(rep[:, None].expand(-1, self.config.history, -1))

    def transition(self, state: State, action: Tensor) -> State:
        """Predicted next State from `state` and `action` (B, A)."""
        hist = self.history_of(state)
        return self._predict(hist, self.check_action(action, hist.shape[0]))

    def _predict(self, hist: Tensor, action: Tensor) -> State:
        nxt = self.predictor(hist, action)
        return self._make_state(torch.cat([hist[:, 1:], nxt[:, None]], 1))

    def update(self, state: State, action: Tensor, obs: Obs) -> State:
        """Re-encode `obs` (B, ...); with ``update_fusion = f > 0``: (1 - f) enc + f pred.

        `action` is validated (shape, device, batch size) even when it is not used (f = 0).
        """
        hist = self.history_of(state)
        b = hist.shape[0]
        action = self.check_action(action, b)
        rep = self._embed(obs, b)
        f = self.config.update_fusion
        if f > 0.0:
            rep = (1.0 - f) * rep + f * self._predict(hist, action).tensors["rep"]
        return self._make_state(torch.cat([hist[:, 1:], rep[:, None]], 1))

    def decode(self, state: State, heads: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Representation-level outputs only: ``rep`` (B, D). No pixel, reward or continue head."""
        for h in heads or ():
            if h in _MISSING_HEADS:
                raise SpecError(f"decode: head {h!r} not available: {_MISSING_HEADS[h]}")
        self.check_heads(heads)
        return {"rep": self.history_of(state)[:, -1]}

    def features(self, state: State) -> Tensor:
        """rep (B, D)."""
        return self.history_of(state)[:, -1]

    @torch.no_grad()
    def update_target(self) -> None:
        """EMA step of the target encoder (regularizer 'ema'); call after each optimiser step."""
        if self.target is not None:
            self.target.update(self.encoder)

    # --- training -----------------------------------------------------------------------------

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        """Multi-step latent prediction (teacher-forced + autoregressive) + anti-collapse term."""
        batch.validate_in_loss(self.device)
        c = self.config
        b, t = batch.shape
        if t < 2:
            raise SpecError(f"batch: expected T >= 2 to predict anything, got T={t}")
        action = self.check_action(batch.action, arg="batch.action", batch_dims=2)
        z, pre = self._embed_seq_prenorm(batch.obs)  # (B, T, D) each
        # EMA: stop-gradient targets; otherwise end-to-end (LeWM), the regulariser stops collapse
        target = z if self.target is None else self._embed_seq(batch.obs, self.target)
        seg = batch.is_first.long().cumsum(1)  # (B, T) episode segment ids
        windows = self._windows(z)  # (B, T, k, D): reps t-k+1..t (front-padded)
        tf_loss = self._tf_loss(windows, action, target, seg)
        steps = min(c.pred_steps, t - 1)
        ar_loss = (
            self._ar_loss(windows, action, target, seg, steps) if steps > 1 else z.new_zeros(())
        )
        reg = self._regulariser(z)
        total = tf_loss + c.ar_weight * ar_loss + c.reg_weight * reg
        flat = z.detach().reshape(b * t, -1)  # (B, T, D) -> (B*T, D)
        std = flat.std(0)
        pre_std = pre.detach().reshape(b * t, -1).std(0)  # before the encoder's BatchNorm
        metrics: Metrics = {
            "loss": total.detach(),
            "pred_loss": tf_loss.detach(),
            "ar_loss": ar_loss.detach(),
            "reg_loss": reg.detach(),
            "emb_std": std.mean(),  # ~1 by construction in train mode with enc_batch_norm
            "emb_std_min": std.min(),
            "emb_std_prenorm": pre_std.mean(),  # the collapse signal; see README "Metrics"
            "emb_std_prenorm_min": pre_std.min(),
            "eff_rank": effective_rank(flat),
        }
        return total, metrics

    def _windows(self, z: Tensor) -> Tensor:
        """z (B, T, D) -> (B, T, k, D): at t the reps t-k+1..t (z[:, 0] repeated before t=0)."""
        k = self.config.history
        pad = z[:, :1].expand(-1, k - 1, -1)
        zp = torch.cat([pad, z], 1)  # (B, T+k-1, D)
        return zp.unfold(1, k, 1).transpose(2, 3)  # (B, T, D, k) -> (B, T, k, D)

    def _valid(self, seg: Tensor, start: int, stop: int) -> Tensor:
        """(B, n) mask: the window ending at t (t in [start, stop)) and t + 1 share an episode."""
        k = self.config.history
        first = (torch.arange(start, stop, device=seg.device) - k + 1).clamp_min(0)
        return seg[:, first] == seg[:, start + 1 : stop + 1]

    def _tf_loss(self, windows: Tensor, action: Tensor, target: Tensor, seg: Tensor) -> Tensor:
        """Teacher-forced one-step MSE over every t -> t+1 inside one episode."""
        b, t, k, d = windows.shape
        hist = windows[:, :-1].reshape(b * (t - 1), k, d)  # (B, T-1, k, D) -> (B*(T-1), k, D)
        act = action[:, 1:].reshape(b * (t - 1), -1)  # (B, T-1, A) -> (B*(T-1), A)
        pred = self.predictor(hist, act).reshape(b, t - 1, d)
        err = F.mse_loss(pred, target[:, 1:], reduction="none").mean(-1)  # (B, T-1)
        mask = self._valid(seg, 0, t - 1).to(err.dtype)
        return (err * mask).sum() / mask.sum().clamp_min(1.0)

    def _ar_loss(
        self, windows: Tensor, action: Tensor, target: Tensor, seg: Tensor, steps: int
    ) -> Tensor:
        """Open-loop MSE: from every start t, predict `steps` reps with predicted history only."""
        b, t, k, d = windows.shape
        n = t - steps  # number of start points 0..n-1
        hist = windows[:, :n].reshape(b * n, k, d)  # (B, n, k, D) -> (B*n, k, D)
        total, count = windows.new_zeros(()), windows.new_zeros(())
        for s in range(1, steps + 1):
            act = action[:, s : s + n].reshape(b * n, -1)  # (B, n, A) -> (B*n, A)
            pred = self.predictor(hist, act)
            hist = torch.cat([hist[:, 1:], pred[:, None]], 1)
            err = F.mse_loss(pred.reshape(b, n, d), target[:, s : s + n], reduction="none")
            first = (torch.arange(n, device=seg.device) - k + 1).clamp_min(0)
            mask = (seg[:, first] == seg[:, s : s + n]).to(err.dtype)  # (B, n) same episode
            total = total + (err.mean(-1) * mask).sum()
            count = count + mask.sum()
        return total / count.clamp_min(1.0)

    def _regulariser(self, z: Tensor) -> Tensor:
        """Anti-collapse term on online reps z (B, T, D); SIGReg tests each time step over B."""
        c = self.config
        if c.regularizer == "sigreg":
            b, t, d = z.shape
            dirs = torch.randn(d, c.sigreg_projections, device=z.device, dtype=z.dtype)
            dirs = dirs / dirs.norm(dim=0, keepdim=True)  # (D, M) unit directions
            proj = (z @ dirs).reshape(b, t * c.sigreg_projections)  # (B, T, M) -> (B, T*M)
            return epps_pulley(proj, c.sigreg_knots, c.sigreg_t_max).mean()
        if c.regularizer == "vicreg":
            return vicreg(z.reshape(-1, z.shape[-1]))  # (B, T, D) -> (B*T, D)
        return z.new_zeros(())

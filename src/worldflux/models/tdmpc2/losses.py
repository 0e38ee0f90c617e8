"""TD-MPC2 losses (nicklashansen/tdmpc2 ``tdmpc2.py``: the loss parts of ``_update``,
``update_pi``, ``_td_target``). The optimisers, clipping, NaN/Inf guard and target EMA that turn
them into one update live in `worldflux.agents.tdmpc2.TDMPC2Agent.update`.

Batch mapping: a `Batch` window of T = horizon + 1 rows. Row 0 gives the start observation;
rows 1..H give, for transition t (row t -> row t+1), the action a_t = ``action[:, t+1]``, the
reward ``reward[:, t+1]`` and the termination flag ``is_terminal[:, t+1]`` (the official buffer's
``obs[0], action[1:], reward[1:]`` alignment). A window that crosses an episode boundary
(``is_first`` in rows 1..H) has every transition from that row on masked out of the world-model
loss; masked entries count as zeros and the normalisation stays the official 1/(B*H).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from worldflux.core.batch import Batch
from worldflux.core.exceptions import SpecError
from worldflux.nn.functional import soft_cross_entropy, symlog, two_hot

if TYPE_CHECKING:
    from worldflux.models.tdmpc2.model import TDMPC2


def _split_batch(model: TDMPC2, batch: Batch):
    """Validate; lay out time-major: obs dict, actions (H, B, A), reward/term/valid (H, B)."""
    batch.validate_in_loss(model.device)
    h = model.config.horizon
    b, t = batch.shape
    if t != h + 1:
        raise SpecError(f"batch: expected T = horizon + 1 = {h + 1} rows, got T = {t}")
    obs = model.check_obs(batch.obs, arg="batch.obs", batch_dims=2)
    action = model.check_action(batch.action, arg="batch.action", batch_dims=2)[:, 1:]
    action = action.transpose(0, 1)  # (B, H, A) -> (H, B, A)
    dtype = action.dtype  # the model's
    reward = batch.reward[:, 1:].transpose(0, 1).to(dtype)  # (B, H) -> (H, B)
    term = batch.is_terminal[:, 1:].transpose(0, 1).to(dtype)  # (H, B)
    valid = (~batch.is_first[:, 1:]).transpose(0, 1).to(dtype).cumprod(0)  # (H, B)
    return obs, action, reward, term, valid


@torch.no_grad()
def td_target(model: TDMPC2, next_z: Tensor, reward: Tensor, term: Tensor) -> Tensor:
    """r + discount * (1 - terminal) * min of 2 random target Qs at (z', pi(z')). (H, B)."""
    action, _ = model.pi(next_z)
    q = model.q(next_z, action, reduce="min_of_two_random", target=True)
    return reward + model.discount * (1.0 - term) * q


def world_model_loss(model: TDMPC2, batch: Batch) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """-> total loss, detached metrics, and the rolled-out latents zs (H+1, B, L)."""
    c = model.config
    obs, action, reward, term, valid = _split_batch(model, batch)
    h, b = reward.shape
    with torch.no_grad():
        next_z = model.embed({k: v[:, 1:] for k, v in obs.items()}, 2)  # (B, H, L)
        next_z = next_z.transpose(0, 1)  # (B, H, L) -> (H, B, L)
        targets = td_target(model, next_z, reward, term)  # (H, B)
    z = model.embed({k: v[:, 0] for k, v in obs.items()})  # (B, L)
    zs = [z]
    for t in range(h):
        z = model.next_latent(z, action[t])
        zs.append(z)
    latents = torch.stack(zs)  # (H+1, B, L)
    rho = c.rho ** torch.arange(h, device=reward.device, dtype=reward.dtype)
    weight = rho[:, None] * valid / (b * h)  # (H, B): rho**t, masked, averaged
    bins = model.bins
    consistency = ((latents[1:] - next_z) ** 2).mean(-1)  # (H, B)
    reward_ce = soft_cross_entropy(
        model.reward_logits(latents[:-1], action), two_hot(symlog(reward), bins)
    )  # (H, B)
    q_logits = model.q_logits(latents[:-1], action)  # (E, H, B, K)
    value_ce = soft_cross_entropy(q_logits, two_hot(symlog(targets), bins)[None])  # (E, H, B)
    losses = {
        "consistency": (consistency * weight).sum(),
        "reward": (reward_ce * weight).sum(),
        "value": (value_ce * weight).sum() / c.num_q,
        "termination": _termination_loss(model, latents[1:], term, valid),
    }
    coefs = {
        "consistency": c.consistency_coef,
        "reward": c.reward_coef,
        "value": c.value_coef,
        "termination": c.termination_coef,
    }
    assert losses.keys() == coefs.keys()
    total = sum(coefs[k] * v for k, v in losses.items())
    assert isinstance(total, Tensor)
    metrics = {f"{k}_loss": v.detach() for k, v in losses.items()}
    metrics["total_loss"] = total.detach()
    metrics["td_target_mean"] = targets.mean()
    return total, metrics, latents


def _termination_loss(model: TDMPC2, zs: Tensor, term: Tensor, valid: Tensor) -> Tensor:
    """BCE of the termination head at z_{t+1} (episodic configs; 0 otherwise)."""
    logit = model.termination_logit(zs)  # (H, B)
    if logit is None:
        return zs.new_zeros(())
    bce = F.binary_cross_entropy_with_logits(logit, term, reduction="none")
    return (bce * valid).sum() / valid.numel()


def policy_loss(model: TDMPC2, latents: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Maximise scaled Q + entropy over latents (H+1, B, L), Q frozen (detached weights)."""
    c = model.config
    zs = latents.detach()
    action, info = model.pi(zs)
    qs = model.q(zs, action, reduce="mean_of_two_random", detach=True)  # (H+1, B)
    model.scale.update(qs[0][:, None])
    qs = model.scale(qs)
    rho = c.rho ** torch.arange(zs.shape[0], device=zs.device, dtype=zs.dtype)
    objective = c.entropy_coef * info["scaled_entropy"].squeeze(-1) + qs  # (H+1, B)
    loss = (-objective.mean(1) * rho).mean()
    metrics = {
        "pi_loss": loss.detach(),
        "pi_entropy": info["entropy"].detach().mean(),
        "pi_scaled_entropy": info["scaled_entropy"].detach().mean(),
        "pi_scale": model.scale.value[0].detach().clone(),
    }
    return loss, metrics

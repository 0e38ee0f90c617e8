"""TD-MPC2 losses: alignment, masking, rho weighting, frozen Q in the policy loss, running scale,
termination. The update built from them is tested in tests/agents/test_tdmpc2_update.py."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

from worldflux.agents.tdmpc2 import make_optimizers
from worldflux.core.batch import Batch
from worldflux.core.exceptions import SpecError
from worldflux.core.registry import create_world_model
from worldflux.models.tdmpc2 import TDMPC2
from worldflux.models.tdmpc2.losses import policy_loss, world_model_loss
from worldflux.nn.functional import soft_cross_entropy, symlog, two_hot

OBS = gym.spaces.Box(-1, 1, (7,))
ACT = gym.spaces.Box(-1, 1, (3,))


def debug(**kw) -> TDMPC2:
    m = create_world_model("tdmpc2:debug", OBS, ACT, seed=0, **kw)
    assert isinstance(m, TDMPC2)
    return m


def make_batch(b: int = 6, t: int = 4, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    false = torch.zeros(b, t, dtype=torch.bool)
    return Batch(
        obs=torch.randn(b, t, 7, generator=g),
        action=torch.rand(b, t, 3, generator=g) * 2 - 1,
        reward=torch.randn(b, t, generator=g),
        is_first=false.clone(),
        is_terminal=false.clone(),
        is_last=false.clone(),
    )


def loss_of(m: TDMPC2, batch: Batch) -> torch.Tensor:
    torch.manual_seed(123)  # same policy samples and Q-member draws for both calls
    return m.loss(batch)[0]


def test_batch_alignment_uses_obs0_and_actions_rewards_1_to_h() -> None:
    m = debug().eval()
    torch.nn.init.normal_(m.reward_net[-1].weight)  # zero-init: reward CE ignores targets
    batch = make_batch()
    base = loss_of(m, batch)
    changed = make_batch()
    changed.action[:, 0] = 0.9  # a_{-1}: the action that led to obs[0], unused
    changed.reward[:, 0] = 50.0  # reward on arriving at obs[0], unused
    assert torch.allclose(loss_of(m, changed), base)
    for field in ("action", "reward"):
        other = make_batch()
        getattr(other, field)[:, 1] += 0.5
        assert not torch.allclose(loss_of(m, other), base), field


def test_window_must_be_horizon_plus_one() -> None:
    m = debug()
    with pytest.raises(SpecError, match="horizon"):
        m.loss(make_batch(t=5))


def test_episode_boundary_is_masked() -> None:
    m = debug().eval()
    batch = make_batch()
    batch.is_first[:, 2] = True  # a new episode starts at row 2: transitions 1 and 2 are void
    batch.is_last[:, 1] = True
    base = loss_of(m, batch)
    later = make_batch()
    later.is_first[:, 2] = True
    later.is_last[:, 1] = True
    later.obs[:, 2:] += 3.0
    later.reward[:, 2:] -= 7.0
    later.action[:, 2:] = 0.0
    assert torch.allclose(loss_of(m, later), base)
    unmasked = make_batch()
    unmasked.obs[:, 2:] += 3.0
    assert not torch.allclose(loss_of(m, unmasked), loss_of(m, make_batch()))


def test_rho_weighting_matches_manual_sum() -> None:
    m = debug(rho=0.5).eval()
    batch = make_batch()
    torch.manual_seed(5)
    _, metrics = m.loss(batch)
    h = m.config.horizon
    with torch.no_grad():
        z = m.embed({"obs": batch.obs[:, 0]})
        cons, rew = 0.0, 0.0
        for t in range(h):
            a = batch.action[:, t + 1]
            target = m.embed({"obs": batch.obs[:, t + 1]})
            r_logits = m.reward_logits(z, a)
            r_target = two_hot(symlog(batch.reward[:, t + 1]), m.bins)
            rew += 0.5**t * soft_cross_entropy(r_logits, r_target).mean()
            z = m.next_latent(z, a)
            cons += 0.5**t * ((z - target) ** 2).mean()
    assert torch.allclose(metrics["consistency_loss"], torch.as_tensor(cons / h), rtol=1e-5)
    assert torch.allclose(metrics["reward_loss"], torch.as_tensor(rew / h), rtol=1e-5)


def test_policy_update_leaves_q_and_model_unchanged() -> None:
    m = debug().train()
    _, pi_optim = make_optimizers(m)
    _, _, latents = world_model_loss(m, make_batch())
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not n.startswith("pi_")}
    pi_before = [p.detach().clone() for p in m.pi_net.parameters()]
    loss, metrics = policy_loss(m, latents)
    loss.backward()
    for n, p in m.named_parameters():
        if not n.startswith("pi_"):
            assert p.grad is None, n
    assert all(p.grad is not None for p in m.pi_net.parameters())
    pi_optim.step()
    for n, p in m.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any(not torch.equal(a, b) for a, b in zip(pi_before, m.pi_net.parameters(), strict=True))
    assert "pi_scale" in metrics


def test_running_scale_tracks_percentile_range() -> None:
    m = debug(tau=1.0)
    x = torch.linspace(0, 100, 101)[:, None]  # 5th..95th percentile range = 90
    m.scale.update(x)
    assert torch.allclose(m.scale.value, torch.tensor([90.0]))
    m.scale.update(torch.zeros(10, 1))
    assert torch.allclose(m.scale.value, torch.tensor([1.0]))  # floor at 1


def test_termination_head_for_episodic_tasks() -> None:
    m = debug(episodic=True)
    batch = make_batch()
    batch.is_terminal[:3, 3] = True
    batch.is_last[:3, 3] = True
    _, metrics = m.loss(batch)
    assert metrics["termination_loss"] > 0
    assert "continue" in m.decode(m.initial_state(2))
    assert debug().loss(batch)[1]["termination_loss"] == 0

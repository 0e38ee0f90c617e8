"""Every family runs in the dtype of its parameters: float64 end to end (loss, backward, an agent
update, acting), which is also how numerical equivalence with reference code is checked."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldflux.agents import AGENTS
from worldflux.core.batch import Batch
from worldflux.core.model import WorldModel
from worldflux.core.registry import FAMILIES, create_world_model

VEC = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
IMG = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)  # 64x64: TD-MPC2's pixel encoder size
OBS = {"vector": VEC, "image": IMG}
ACTIONS = {
    "continuous": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
    "discrete": gym.spaces.Discrete(3),
}

families = pytest.mark.parametrize("family", sorted(FAMILIES))


def _model(family: str, obs: str = "vector", action: str = "continuous", **kw: Any) -> WorldModel:
    return create_world_model(f"{family}:debug", OBS[obs], ACTIONS[action], seed=0, **kw)


def _obs(space: Any, *lead: int) -> torch.Tensor:
    if space.dtype == np.uint8:
        return torch.randint(0, 256, (*lead, *space.shape), dtype=torch.uint8)
    return torch.rand(*lead, *space.shape) * 2 - 1


def _batch(model: WorldModel, obs: str, dtype: torch.dtype = torch.float32, B: int = 3) -> Batch:
    """A (B, T) batch as the replay gives it (float32 unless `dtype`), one terminal row."""
    T = model.config.horizon + 1 if model.family == "tdmpc2" else 4
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    is_last = torch.zeros(B, T, dtype=torch.bool)
    is_last[:, -1] = True
    spec = model.action_spec
    if spec.discrete:
        action = torch.nn.functional.one_hot(torch.randint(0, spec.dim, (B, T)), spec.dim).float()
    else:
        action = torch.rand(B, T, spec.dim) * 2 - 1
    action[:, 0] = 0.0
    o = _obs(OBS[obs], B, T)
    return Batch(
        obs=o if o.dtype == torch.uint8 else o.to(dtype),
        action=action.to(dtype),
        reward=torch.randn(B, T, dtype=dtype),
        is_first=is_first,
        is_terminal=is_last & (torch.arange(B) == 0).unsqueeze(1),
        is_last=is_last,
    )


@families
@pytest.mark.parametrize("obs,action", [("vector", "continuous"), ("image", "discrete")])
def test_float64_loss_and_backward(family: str, obs: str, action: str) -> None:
    model = _model(family, obs, action).double().train()
    loss, metrics = model.loss(_batch(model, obs))
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    assert {k: v.dtype for k, v in metrics.items() if v.dtype != torch.float64} == {}
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float64 and bool(g.isfinite().all()) for g in grads)


@families
def test_float64_batch_inputs(family: str) -> None:
    """float64 observations, actions and rewards (reference data) reach a float64 model as is."""
    model = _model(family).double().train()
    loss, _ = model.loss(_batch(model, "vector", torch.float64))
    assert loss.dtype == torch.float64 and torch.isfinite(loss)


@families
@pytest.mark.parametrize("obs,action", [("vector", "continuous"), ("image", "discrete")])
def test_float64_agent_learns_and_acts(family: str, obs: str, action: str) -> None:
    model = _model(family, obs, action).double()
    agent: Any = AGENTS[family]()(model)
    metrics = agent.update(_batch(model, obs))
    assert metrics["nonfinite"] == 0.0 and all(np.isfinite(v) for v in metrics.values())
    assert all(
        t.dtype == torch.float64 for t in model.state_dict().values() if t.is_floating_point()
    )
    if family == "jepa":
        agent.set_goal(_obs(OBS[obs], 2))
    state = None
    for first in (True, False):
        act, state = agent.act(
            _obs(OBS[obs], 2), state, explore=True, is_first=torch.tensor([first] * 2)
        )
        assert act.shape == (2, model.action_spec.dim) and act.dtype == torch.float64
        assert bool(act.isfinite().all())
        if state is not None:
            assert {t.dtype for t in state.tensors.values()} == {torch.float64}


@pytest.mark.parametrize("family,overrides", [("tdmpc2", {}), ("jepa", {"regularizer": "vicreg"})])
def test_float64_loss_matches_float32(family: str, overrides: dict[str, Any]) -> None:
    """Same weights and random draws: float64 is the float32 computation, more precise (the
    families whose loss draws no dtype-dependent random numbers)."""
    model = _model(family, **overrides).train()
    batch = _batch(model, "vector")
    torch.manual_seed(1)
    loss32, _ = model.loss(batch)
    torch.manual_seed(1)
    loss64, _ = model.double().loss(batch)
    assert loss64.dtype == torch.float64
    torch.testing.assert_close(loss64.float(), loss32, rtol=1e-5, atol=1e-6)


@families
def test_bfloat16_loss_runs(family: str) -> None:
    model = _model(family).to(torch.bfloat16).train()
    loss, _ = model.loss(_batch(model, "vector"))
    assert loss.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()

"""``precision="bf16"``: every family updates and acts under bf16 autocast with fp32 master
weights, and its losses stay close to fp32 ones."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_update_guard import batch_for

from worldflux.agents import make_agent

VEC = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
CONT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


@pytest.mark.parametrize("name", ["dreamerv3:debug", "tdmpc2:debug", "jepa:debug"])
def test_bf16_update_is_finite_and_near_fp32(name: str) -> None:
    fp32 = make_agent(name, VEC, CONT, seed=0)
    bf16 = make_agent(name, VEC, CONT, seed=0, agent_options={"precision": "bf16"})
    got = {}
    for label, agent in (("fp32", fp32), ("bf16", bf16)):
        torch.manual_seed(0)
        got[label] = agent.update(batch_for(agent))
        assert float(got[label]["nonfinite"]) == 0.0
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # master weights
    assert all(s.dtype == torch.float32 for o in bf16.optimizers().values()
               for st in o.state.values() for s in st.values() if s.is_floating_point()
               and s.dim() > 0)  # fmt: skip
    losses = [k for k in got["fp32"] if k.endswith("loss")]
    for key in losses:
        value = torch.as_tensor(got["bf16"][key]).float()
        assert torch.isfinite(value), key
        # bf16 keeps 8 mantissa bits: a loss within a few percent of fp32's
        torch.testing.assert_close(value, torch.as_tensor(got["fp32"][key]).float(),
                                   rtol=0.1, atol=0.05)  # fmt: skip


@pytest.mark.parametrize("name", ["dreamerv3:debug", "tdmpc2:debug"])
def test_bf16_acting_returns_fp32_actions_and_state(name: str) -> None:
    agent = make_agent(name, VEC, CONT, seed=0, agent_options={"precision": "bf16"})
    obs = torch.rand(3, 6) * 2 - 1
    action, state = agent.act(obs, None, explore=True)
    action, state = agent.act(obs, state, explore=False, is_first=torch.tensor([1, 0, 0]).bool())
    assert action.dtype == torch.float32 and action.shape == (3, 2)
    assert torch.isfinite(action).all() and action.abs().max() <= 1.0
    if state is not None:
        assert all(v.dtype == torch.float32 for v in state.tensors.values())

"""Every family's update and acting on each available device (``device`` fixture: CPU, and CUDA
where a GPU exists), eager and bf16, plus a State's round trip to the device and back."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_update_guard import batch_for

from worldflux.agents import make_agent
from worldflux.core.state import State

VEC = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
CONT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", ["dreamerv3:debug", "tdmpc2:debug", "jepa:debug"])
def test_update_and_act_on_device(name: str, precision: str, device: torch.device) -> None:
    agent = make_agent(name, VEC, CONT, seed=0, device=device,
                       agent_options={"precision": precision})  # fmt: skip
    metrics = agent.update(batch_for(agent).to(device))
    assert float(metrics["nonfinite"]) == 0.0
    for key, value in metrics.items():
        assert not isinstance(value, torch.Tensor) or value.device.type == device.type, key
    if name.startswith("jepa"):
        agent.set_goal(torch.rand(2, 6, device=device))  # type: ignore[attr-defined]
    obs = torch.rand(2, 6, device=device) * 2 - 1
    action, state = agent.act(obs, None, explore=True)
    action, state = agent.act(obs, state, explore=False, is_first=torch.ones(2, dtype=torch.bool))
    assert action.device.type == device.type and action.shape == (2, 2)
    assert action.dtype == torch.float32 and torch.isfinite(action).all()


def test_state_round_trip(device: torch.device) -> None:
    state = State({"deter": torch.randn(3, 8), "stoch": torch.randint(0, 5, (3, 4))})
    there = state.to(device)
    assert all(v.device.type == device.type for v in there.tensors.values())
    back = there.to("cpu")
    for key, value in state.tensors.items():
        assert torch.equal(back.tensors[key], value) and back.tensors[key].dtype == value.dtype


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["tdmpc2:debug", "dreamerv3:debug"])
def test_cuda_graph_mode_updates_and_acts(name: str) -> None:
    options = {"compile": True, "compile_mode": "reduce-overhead"}
    agent = make_agent(name, VEC, CONT, seed=0, device="cuda", agent_options=options)
    for _ in range(3):  # CUDA graphs record on a warm-up call, then replay
        metrics = agent.update(batch_for(agent).to("cuda"))
        assert float(metrics["nonfinite"]) == 0.0
    action, _ = agent.act(torch.rand(2, 6, device="cuda"), None, explore=False)
    assert action.shape == (2, 2) and bool(torch.isfinite(action).all())

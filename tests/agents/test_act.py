"""Acting is inference: no autograd graph leaks into actions or acting States."""

from __future__ import annotations

import pytest
import torch
from bandit import make_match_env

from worldflux.agents import make_agent
from worldflux.envs import GymEnv, make_env
from worldflux.envs.tworoom import TwoRoomEnv

CASES = [
    ("dreamerv3:debug", {}, "Pendulum-v1"),
    ("dreamerv3:debug", {}, "match"),
    ("tdmpc2:debug", {"act": "policy"}, "Pendulum-v1"),
    ("tdmpc2:debug", {"act": "mppi"}, "Pendulum-v1"),
    ("jepa:debug", {}, "tworoom"),
]


@pytest.mark.parametrize(("model", "options", "env_id"), CASES)
def test_act_returns_tensors_without_grad(model: str, options: dict, env_id: str) -> None:
    envs = {"match": make_match_env, "tworoom": lambda: GymEnv(TwoRoomEnv())}
    env = envs[env_id]() if env_id in envs else make_env(env_id)
    agent = make_agent(model, env.observation_space, env.action_space, seed=0,
                       agent_options=options)  # fmt: skip
    obs = torch.as_tensor(env.reset(seed=0).obs)  # model format: float vectors, uint8 images
    batch = obs.expand(3, *obs.shape).clone()  # the env's form, batched: (3, *shape)
    if env_id == "tworoom":
        agent.set_goal(batch)  # type: ignore[attr-defined]
    assert torch.is_grad_enabled()
    state = None
    for t in range(2):
        action, state = agent.act(batch, state, explore=True, is_first=torch.full((3,), t == 0))
        assert action.shape == (3, agent.model.action_spec.dim)
        assert not action.requires_grad
        if state is not None:
            assert not any(v.requires_grad for v in state.tensors.values())
    action.numpy()  # usable as is, no detach needed

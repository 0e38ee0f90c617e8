"""The one NaN/Inf guard, used the same way by every family's `update`, and the planners' state
in agent checkpoints (exact resume of warm starts and goals)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldflux.agents import Agent, make_agent
from worldflux.core.batch import Batch

VEC = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
CONT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
FAMILIES = ["dreamerv3:debug", "tdmpc2:debug", "jepa:debug"]


def agent_for(name: str) -> Agent:
    return make_agent(name, VEC, CONT, seed=0)


def batch_for(agent: Agent, seed: int = 0) -> Batch:
    cfg = agent.model.config
    b, t = 4, (cfg.horizon + 1 if agent.model.family == "tdmpc2" else 8)
    g = torch.Generator().manual_seed(seed)
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    no = torch.zeros(b, t, dtype=torch.bool)
    return Batch(torch.rand(b, t, 6, generator=g) * 2 - 1, torch.rand(b, t, 2, generator=g) * 2 - 1,
                 torch.randn(b, t, generator=g), is_first, no, no.clone())  # fmt: skip


@pytest.mark.parametrize("name", FAMILIES)
def test_nonfinite_world_model_step_changes_nothing(name: str) -> None:
    agent = agent_for(name)
    before = {k: v.clone() for k, v in agent.model.state_dict().items()}
    batch = batch_for(agent)
    batch.obs[0, 1, 0] = float("nan")  # every family's world-model loss reads the observations
    metrics = agent.update(batch)
    assert metrics["nonfinite"] == 1.0
    for k, v in agent.model.state_dict().items():  # weights, targets, running statistics
        assert torch.equal(v, before[k]), k
    assert all(not o.state for o in agent.optimizers().values())  # no optimizer stepped
    assert agent.update(batch_for(agent))["nonfinite"] == 0.0
    assert all(o.state for o in agent.optimizers().values())


def test_dreamer_nonfinite_actor_step_keeps_the_return_normaliser(monkeypatch) -> None:
    from worldflux.models.dreamerv3 import DreamerV3ActorCritic

    real = DreamerV3ActorCritic.imagine_loss

    def poisoned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        actor_loss, critic_loss, metrics = real(self, *args, **kwargs)  # updates the normaliser
        return actor_loss * float("nan"), critic_loss, metrics

    monkeypatch.setattr(DreamerV3ActorCritic, "imagine_loss", poisoned)
    agent = make_agent("dreamerv3:debug", VEC, CONT, seed=0, model_overrides={"retnorm_rate": 1.0})
    ac = agent.model.actor_critic  # type: ignore[attr-defined]
    norm = [b.clone() for b in ac.retnorm.buffers()]
    actor = [p.detach().clone() for p in ac.actor.parameters()]
    metrics = agent.update(batch_for(agent))
    assert metrics["nonfinite"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(norm, ac.retnorm.buffers(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(actor, ac.actor.parameters(), strict=True))
    assert not agent.opt.actor.state and agent.opt.critic.state  # type: ignore[attr-defined]


def _act(agent: Agent, obs: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # planning noise
    return agent.act(obs, None, explore=True)[0]


@pytest.mark.parametrize("name", ["tdmpc2:debug", "jepa:debug"])
def test_planner_state_resumes_exactly(name: str) -> None:
    """The warm start (and JEPA's goal) travel in `extra_state`: a fresh agent given it plans
    the next step exactly as the original; without it, it does not."""
    obs = torch.rand(2, 6) * 2 - 1
    a = agent_for(name)
    if name.startswith("jepa"):
        a.set_goal(torch.rand(2, 6) * 2 - 1)  # type: ignore[attr-defined]
    _act(a, obs, 0)
    saved = a.extra_state()
    b, cold = agent_for(name), agent_for(name)
    b.load_extra_state(saved)
    if name.startswith("jepa"):
        cold.planner.set_goal(a.planner.goal)  # type: ignore[attr-defined]
    expected = _act(a, obs, 1)
    assert torch.equal(_act(b, obs, 1), expected)
    assert not torch.equal(_act(cold, obs, 1), expected)


def test_checkpoints_from_before_the_planner_protocol_still_load() -> None:
    a = agent_for("tdmpc2:debug")
    _act(a, torch.rand(2, 6), 0)
    b = agent_for("tdmpc2:debug")
    b.load_extra_state({"plan_prev": a.planner.state_dict()["prev"]})  # type: ignore[attr-defined]
    mine, theirs = b.planner.state_dict(), a.planner.state_dict()  # type: ignore[attr-defined]
    assert torch.equal(mine["prev"], theirs["prev"]) and mine["discrete"] is theirs["discrete"]
    goal = torch.rand(2, 16)
    j = agent_for("jepa:debug")
    j.load_extra_state({"goal_rep": goal, "prev_action": None})
    assert torch.equal(j.goal_rep, goal)  # type: ignore[attr-defined]

"""The one NaN/Inf guard, used the same way by every family's `update` and decided on the device,
and the planners' state in agent checkpoints (exact resume of warm starts and goals)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldflux.agents import Agent, make_agent
from worldflux.core.batch import Batch

VEC = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
CONT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
FAMILIES = ["dreamerv3:debug", "tdmpc2:debug", "jepa:debug"]
# every family, and DreamerV3 with both of its optimisers (Adam, LaProp)
VARIANTS = [*FAMILIES, "dreamerv3:debug+laprop"]


def agent_for(name: str) -> Agent:
    name, _, optimizer = name.partition("+")
    overrides = {"optimizer": optimizer} if optimizer else None
    return make_agent(name, VEC, CONT, seed=0, model_overrides=overrides)


def batch_for(agent: Agent, seed: int = 0) -> Batch:
    cfg = agent.model.config
    b, t = 4, (cfg.horizon + 1 if agent.model.family == "tdmpc2" else 8)
    g = torch.Generator().manual_seed(seed)
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    no = torch.zeros(b, t, dtype=torch.bool)
    return Batch(torch.rand(b, t, 6, generator=g) * 2 - 1, torch.rand(b, t, 2, generator=g) * 2 - 1,
                 torch.randn(b, t, generator=g), is_first, no, no.clone())  # fmt: skip


def snapshot(agent: Agent) -> dict[str, torch.Tensor]:
    """Every number an update may change: weights, targets, running statistics, and every
    optimizer's state (moments, step counts)."""
    out = {f"model/{k}": v.clone() for k, v in agent.model.state_dict().items()}
    for name, opt in agent.optimizers().items():
        for i, state in opt.state_dict()["state"].items():
            for k, v in state.items():
                out[f"{name}/{i}/{k}"] = torch.as_tensor(v).clone()
    return out


def assert_unchanged(before: dict[str, torch.Tensor], agent: Agent) -> None:
    after = snapshot(agent)
    assert after.keys() == before.keys()
    for k, v in after.items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


def steps_of(agent: Agent) -> set[float]:
    return {float(s["step"]) for o in agent.optimizers().values() for s in o.state.values()}


def never_stepped(optimizer: torch.optim.Optimizer) -> bool:
    """Every tensor of the optimizer's state is zero: no step count, no moments (a skipped step
    may create the state, but leaves it as a fresh optimizer's)."""
    states = optimizer.state.values()
    return all(not torch.as_tensor(v).any() for state in states for v in state.values())


def inf_gradient(agent: Agent) -> Any:
    """A hook that makes the gradient of one world-model weight Inf (the loss stays finite)."""
    model: Any = agent.model
    params = model.world_model_parameters() if hasattr(model, "world_model_parameters") else None
    first = next(iter(params)) if params is not None else next(model.encoder.parameters())
    return first.register_hook(lambda g: torch.full_like(g, float("inf")))


@pytest.mark.parametrize("poison", ["nan_loss", "inf_grad"])
@pytest.mark.parametrize("name", VARIANTS)
def test_nonfinite_world_model_step_changes_nothing(name: str, poison: str) -> None:
    """After a finite update (so the optimizers hold moments and step counts), a NaN loss or a
    finite loss with an Inf gradient leaves every weight, statistic, moment and step count
    bit-identical; the next finite update steps again."""
    agent = agent_for(name)
    assert float(agent.update(batch_for(agent, 1))["nonfinite"]) == 0.0
    assert steps_of(agent) == {1.0}
    before = snapshot(agent)
    batch = batch_for(agent)
    hook = None
    if poison == "nan_loss":
        batch.obs[0, 1, 0] = float("nan")  # every family's world-model loss reads the obs
    else:
        hook = inf_gradient(agent)
    metrics = agent.update(batch)
    if hook is not None:
        hook.remove()
    flag = metrics["nonfinite"]
    assert isinstance(flag, torch.Tensor) and flag.dim() == 0 and float(flag) == 1.0
    assert_unchanged(before, agent)
    assert float(agent.update(batch_for(agent, 2))["nonfinite"]) == 0.0
    assert steps_of(agent) == {2.0}
    after = snapshot(agent)
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("model/"))


@pytest.mark.parametrize("name", FAMILIES)
def test_a_skipped_first_update_leaves_a_fresh_state(name: str) -> None:
    """A skipped very first update may leave optimizer state, but only a fresh one (zero moments,
    step 0): the next finite update then equals a first update of an untouched agent."""
    agent, fresh = agent_for(name), agent_for(name)
    model_before = {k: v.clone() for k, v in agent.model.state_dict().items()}
    batch = batch_for(agent)
    batch.obs[0, 1, 0] = float("nan")
    assert float(agent.update(batch)["nonfinite"]) == 1.0
    for k, v in agent.model.state_dict().items():
        assert torch.equal(v, model_before[k]), k
    assert all(never_stepped(opt) for opt in agent.optimizers().values())
    torch.manual_seed(3)
    agent.update(batch_for(agent, 1))
    torch.manual_seed(3)
    fresh.update(batch_for(fresh, 1))
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(v, agent.model.state_dict()[k]), k


@pytest.mark.parametrize("optimizer", ["adam", "laprop"])
def test_dreamer_nonfinite_actor_step_keeps_the_return_normaliser(monkeypatch, optimizer) -> None:
    from worldflux.models.dreamerv3 import DreamerV3ActorCritic

    real = DreamerV3ActorCritic.imagine_loss

    def poisoned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        actor_loss, critic_loss, metrics = real(self, *args, **kwargs)  # updates the normaliser
        return actor_loss * float("nan"), critic_loss, metrics

    monkeypatch.setattr(DreamerV3ActorCritic, "imagine_loss", poisoned)
    overrides = {"retnorm_rate": 1.0, "optimizer": optimizer}
    agent = make_agent("dreamerv3:debug", VEC, CONT, seed=0, model_overrides=overrides)
    ac = agent.model.actor_critic  # type: ignore[attr-defined]
    norm = [b.clone() for b in ac.retnorm.buffers()]
    actor = [p.detach().clone() for p in ac.actor.parameters()]
    critic = [p.detach().clone() for p in ac.critic.parameters()]
    metrics = agent.update(batch_for(agent))
    assert float(metrics["nonfinite"]) == 1.0
    assert all(torch.equal(a, b) for a, b in zip(norm, ac.retnorm.buffers(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(actor, ac.actor.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(critic, ac.critic.parameters(), strict=True))
    opt: Any = agent.opt  # type: ignore[attr-defined]
    assert {float(s["step"]) for s in opt.actor.state.values()} <= {0.0}
    assert {float(s["step"]) for s in opt.critic.state.values()} == {1.0}


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

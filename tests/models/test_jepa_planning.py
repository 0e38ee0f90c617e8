"""GoalPlanner (CEM in latent space) against a stub latent model whose optimum is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import Tensor

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.core.registry import create_world_model
from worldflux.core.state import State
from worldflux.models.jepa.planning import GoalPlanner
from worldflux.planners import CEM
from worldflux.planners.base import Planner


class PointModel:
    """rep = a 2-D position; an action (B, 2) in [-1, 1]^2 moves it by 0.1 * action."""

    def transition(self, state: State, action: Tensor) -> State:
        return State({"rep": state.tensors["rep"] + 0.1 * action})


def make_planner(horizon: int = 5, repeat: int = 1, weight: float = 0.0) -> GoalPlanner:
    cem = CEM(2, horizon, 256, 32, 6, generator=torch.Generator().manual_seed(0))
    return GoalPlanner(cem, intermediate_weight=weight, action_repeat=repeat)


def test_far_goal_optimum_is_the_box_corner_towards_it() -> None:
    # goals far outside the reachable set: the best plan pushes every action to the corner
    planner = make_planner()
    start = State({"rep": torch.zeros(3, 2)})
    goals = torch.tensor([[10.0, -10.0], [-10.0, -10.0], [10.0, 10.0]])
    planner.set_goal(goals)
    action = planner.plan(PointModel(), start, explore=False)
    assert action.shape == (3, 2)
    torch.testing.assert_close(action, goals.sign(), atol=0.15, rtol=0.0)


def test_objective_matches_the_true_distance() -> None:
    planner = make_planner(horizon=3, weight=1.0)
    state = State({"rep": torch.zeros(1, 2)})
    goal = torch.tensor([[0.3, 0.0]])
    acts = torch.tensor([[[1.0, 0.0]] * 3, [[0.0, 0.0]] * 3])[None]  # (1, 2, 3, 2)
    score = planner.objective(PointModel(), state, goal, acts)
    assert score.shape == (1, 2)
    # straight at the goal: distances 0.04, 0.01, 0 -> -(0 + mean) ; standing still: 0.09 each
    torch.testing.assert_close(score, torch.tensor([[-(0.05 / 3), -(0.09 + 0.09)]]))


def test_receding_horizon_reaches_goals_batched() -> None:
    # horizon-only scoring leaves the first action free once the goal is in reach; the
    # intermediate term makes the plan settle on the goal
    planner = make_planner(weight=1.0)
    state = State({"rep": torch.zeros(4, 2)})
    goals = torch.tensor([[0.8, 0.3], [-0.5, 0.6], [0.0, -0.9], [0.2, 0.2]])
    planner.set_goal(goals)
    for _ in range(15):
        action = planner.plan(PointModel(), state, explore=False)
        state = PointModel().transition(state, action)  # the "real" system equals the model
    dist = (state.tensors["rep"] - goals).norm(dim=-1)
    assert torch.all(dist < 0.05), dist


def test_action_repeat_extends_the_lookahead() -> None:
    planner = make_planner(horizon=2, repeat=5)
    state = State({"rep": torch.zeros(1, 2)})
    goal = torch.tensor([[0.0, 1.0]])  # reachable with 2 actions only when each is held 5 steps
    acts = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])[None]
    score = planner.objective(PointModel(), state, goal, acts)
    torch.testing.assert_close(score, torch.zeros(1, 1))


def test_reset_and_bad_input() -> None:
    planner = make_planner()
    state = State({"rep": torch.zeros(2, 2)})
    with pytest.raises(SpecError, match="set_goal"):
        planner.plan(PointModel(), state, explore=False)
    planner.set_goal(torch.ones(2, 2))
    planner.plan(PointModel(), state, explore=False)
    assert planner.batch_size == 2
    planner.reset(torch.tensor([True, False]))
    with pytest.raises(SpecError, match="goal_rep"):
        planner.set_goal(torch.ones(2, 2, 1))
    planner.set_goal(torch.ones(2, 3))
    with pytest.raises(SpecError, match="goal_rep"):
        planner.plan(PointModel(), state, explore=False)
    planner.set_goal(torch.ones(2, 2))
    with pytest.raises(SpecError, match="rep"):
        planner.plan(PointModel(), State({"h": torch.zeros(2, 2)}), explore=False)
    with pytest.raises(ConfigError, match="action_repeat"):
        GoalPlanner(planner.cem, action_repeat=0)


def test_is_a_planner_and_its_state_round_trips() -> None:
    """Goal and warm start come back through state_dict: the next plan is the same."""
    planner = make_planner()
    assert isinstance(planner, Planner)
    state = State({"rep": torch.zeros(2, 2)})
    planner.set_goal(torch.tensor([[0.5, 0.5], [-0.5, 0.2]]))
    planner.plan(PointModel(), state, explore=False)
    saved = planner.state_dict()
    again = make_planner()
    again.load_state_dict(saved)
    assert again.batch_size == 2 and again.goal is not None
    planner.cem.generator, again.cem.generator = (torch.Generator().manual_seed(1) for _ in "ab")
    a1 = planner.plan(PointModel(), state, explore=True)
    a2 = again.plan(PointModel(), state, explore=True)
    torch.testing.assert_close(a1, a2, rtol=0.0, atol=0.0)
    with pytest.raises(SpecError, match="goal"):
        again.load_state_dict({"cem": {"prev": None}})


def test_plans_with_a_jepa_model() -> None:
    img = spaces.Box(0, 255, (64, 64, 3), np.uint8)
    act = spaces.Box(-1.0, 1.0, (2,), np.float32)
    model = create_world_model("jepa:debug", img, act, seed=0, history=2).eval()
    cem = CEM(2, 3, 16, 4, 2, generator=torch.Generator().manual_seed(0))
    planner = GoalPlanner(cem, action_repeat=2)
    obs = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    state = model.encode(obs)
    goal = model.encode(torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)).tensors["rep"]
    planner.set_goal(goal)
    action = planner.plan(model, state, explore=False)
    assert action.shape == (3, 2) and bool((action.abs() <= 1).all())
    again = GoalPlanner(CEM(2, 3, 16, 4, 2, generator=torch.Generator().manual_seed(0)), 0.0, 2)
    again.set_goal(goal)
    seeded = again.plan(model, state, explore=False)
    torch.testing.assert_close(seeded, action)  # seeded: same plan

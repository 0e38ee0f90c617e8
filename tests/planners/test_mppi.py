"""MPPI against stub world models whose best action sequence is known."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.core.spec import ActionSpec
from worldflux.core.state import State
from worldflux.planners import MPPI
from worldflux.planners.base import Planner, PlanningModel


class QuadraticStub:
    """State holds each env's target action; reward = -||a - target||^2, value likewise.

    The best sequence is the target at every step. The policy prior is the target (plus
    `pi_noise` Gaussian noise when sampling).
    """

    def __init__(self, action_dim: int, pi_noise: float = 0.0) -> None:
        self.action_spec = ActionSpec(action_dim, False)
        self.discount = 0.9
        self.pi_noise = pi_noise

    def imagine_step(self, state: State, action: Tensor):
        target = state.tensors["target"]
        reward = -((action - target) ** 2).sum(-1)
        return state, {"reward": reward}

    def transition(self, state: State, action: Tensor) -> State:
        return state

    def value(self, state: State, action: Tensor) -> Tensor:
        return -((action - state.tensors["target"]) ** 2).sum(-1)

    def policy(self, state: State, sample: bool = True) -> Tensor:
        t = state.tensors["target"]
        return (t + self.pi_noise * torch.randn_like(t)).clamp(-1, 1) if sample else t


class DiscreteStub:
    """Discrete actions: reward 1 when the one-hot action equals the env's target index."""

    def __init__(self, n: int) -> None:
        self.action_spec = ActionSpec(n, True)
        self.discount = 0.9

    def imagine_step(self, state: State, action: Tensor):
        return state, {"reward": (action * state.tensors["target"]).sum(-1)}

    def transition(self, state: State, action: Tensor) -> State:
        return state

    def value(self, state: State, action: Tensor) -> Tensor:
        return (action * state.tensors["target"]).sum(-1)

    def policy(self, state: State, sample: bool = True) -> Tensor:
        """Always choice 0 (a useless prior)."""
        target = state.tensors["target"]
        return torch.nn.functional.one_hot(torch.zeros_like(target[:, 0]).long(), target.shape[1])


def planner(**kw) -> MPPI:
    args = dict(samples=256, elites=32, pi_trajs=0, generator=torch.Generator().manual_seed(0))
    args.update(kw)
    return MPPI(**args)


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_finds_quadratic_optimum_batched(batch: int) -> None:
    target = torch.rand(batch, 2) * 1.6 - 0.8
    act = planner(iterations=8).plan(QuadraticStub(2), State({"target": target}), explore=False)
    assert act.shape == (batch, 2)
    assert torch.allclose(act, target, atol=0.08)


def test_defaults_match_tdmpc2() -> None:
    m = MPPI()
    got = (m.horizon, m.iterations, m.samples, m.elites, m.pi_trajs)
    assert got == (3, 6, 512, 64, 24)
    assert (m.std_min, m.std_max, m.temperature) == (0.05, 2.0, 0.5)


def test_policy_prior_trajectories_are_used() -> None:
    target = torch.tensor([[0.3, -0.4], [-0.7, 0.2]])
    state = State({"target": target})
    stub = QuadraticStub(2, pi_noise=0.05)
    act = planner(pi_trajs=24, iterations=4).plan(stub, state, explore=False)
    assert torch.allclose(act, target, atol=0.08)
    # a perfect prior: one iteration returns its action exactly, Gaussian samples alone do not
    exact = QuadraticStub(2, pi_noise=0.0)
    with_prior = planner(pi_trajs=24, iterations=1).plan(exact, state, explore=False)
    without = planner(pi_trajs=0, iterations=1).plan(exact, state, explore=False)
    assert torch.equal(with_prior, target)
    assert (without - target).abs().max() > 1e-3


def test_train_mode_adds_exploration_noise_eval_is_deterministic() -> None:
    target = torch.tensor([[0.2, 0.1]])
    state = State({"target": target})
    e1 = planner().plan(QuadraticStub(2), state, explore=False)
    e2 = planner().plan(QuadraticStub(2), state, explore=False)
    assert torch.equal(e1, e2)
    trains = torch.stack(
        [
            planner(generator=torch.Generator().manual_seed(s)).plan(
                QuadraticStub(2), state, explore=True
            )
            for s in range(8)
        ]
    )
    assert trains.std(0).max() > 0.01  # noise with the final std (>= std_min)


def test_warm_start_shifted_mean_and_reset() -> None:
    target = torch.tensor([[0.5, -0.5], [0.1, 0.3]])
    state = State({"target": target})
    m = planner(iterations=6)
    m.plan(QuadraticStub(2), state, explore=False)
    prev = m.last_mean.clone()
    assert m.batch_size == 2 and torch.equal(m.state_dict()["prev"], prev)
    assert prev.shape == (2, 3, 2)
    init = m._initial_mean(2, 2, torch.device("cpu"))
    assert torch.equal(init[:, :-1], prev[:, 1:])
    assert torch.equal(init[:, -1], torch.zeros(2, 2))
    # a warm-started single iteration is closer than a cold one
    warm = planner(iterations=1, std_max=0.1)
    warm.load_state_dict({"prev": prev.clone(), "discrete": False})
    cold = planner(iterations=1, std_max=0.1)
    err_w = (warm.plan(QuadraticStub(2), state, explore=False) - target).abs().max()
    err_c = (cold.plan(QuadraticStub(2), state, explore=False) - target).abs().max()
    assert err_w < err_c
    m.reset(torch.tensor([True, False]))
    kept = m.state_dict()["prev"]
    assert torch.equal(kept[0], torch.zeros(3, 2)) and torch.equal(kept[1], prev[1])
    with pytest.raises(SpecError, match="mask"):
        m.reset(torch.tensor([True]))
    m.reset()
    assert m.state_dict()["prev"] is None and m.batch_size is None


def test_discrete_actions_find_target_index() -> None:
    idx = torch.tensor([2, 0, 4])
    target = torch.nn.functional.one_hot(idx, 5).float()
    act = planner(iterations=4).plan(DiscreteStub(5), State({"target": target}), explore=False)
    assert act.shape == (3, 5)
    assert torch.equal(act.argmax(-1), idx)
    assert torch.equal(act.sum(-1), torch.ones(3))


def test_termination_stops_the_return() -> None:
    class Terminating(QuadraticStub):
        def imagine_step(self, state, action):
            _, preds = super().imagine_step(state, action)
            # terminating (continue 0) whenever the first action dim is > 0: reward after is lost
            preds["continue"] = (action[:, 0] <= 0).float()
            preds["reward"] = preds["reward"] + 5.0
            return state, preds

    state = State({"target": torch.zeros(1, 2)})
    act = planner(iterations=6).plan(Terminating(2), state, explore=False)
    assert act[0, 0] <= 0.0


def test_bad_config_and_model() -> None:
    with pytest.raises(ConfigError, match="elites"):
        MPPI(samples=8, elites=16)
    with pytest.raises(ConfigError, match="pi_trajs"):
        MPPI(samples=8, elites=4, pi_trajs=8)
    with pytest.raises(SpecError, match="MPPI needs a PlanningModel"):
        planner().plan(object(), State({"target": torch.zeros(1, 2)}), explore=True)  # type: ignore[arg-type]


def test_planner_and_model_protocols() -> None:
    assert isinstance(MPPI(), Planner)
    assert isinstance(QuadraticStub(2), PlanningModel) and isinstance(
        DiscreteStub(3), PlanningModel
    )
    assert not isinstance(object(), PlanningModel)


def test_state_dict_round_trip_keeps_discrete_reset() -> None:
    """A loaded warm start is reset like the saved one: uniform probabilities if discrete."""
    target = torch.nn.functional.one_hot(torch.tensor([1, 3]), 4).float()
    m = planner(iterations=2)
    m.plan(DiscreteStub(4), State({"target": target}), explore=False)
    saved = m.state_dict()
    assert saved["discrete"] is True
    fresh = planner()
    fresh.load_state_dict(saved)
    assert fresh.batch_size == 2
    fresh.reset(torch.tensor([True, False]))
    prev = fresh.state_dict()["prev"]
    assert torch.equal(prev[0], torch.full((3, 4), 0.25)) and torch.equal(prev[1], saved["prev"][1])
    with pytest.raises(SpecError, match="discrete"):
        fresh.load_state_dict({"prev": None})
    with pytest.raises(SpecError, match="prev"):
        fresh.load_state_dict({"prev": torch.zeros(2, 4), "discrete": True})

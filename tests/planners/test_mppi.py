"""MPPI against stub world models whose best action sequence is known."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.core.spec import ActionSpec
from worldflux.core.state import State
from worldflux.planners import MPPI


class QuadraticStub:
    """State holds each env's target action; reward = -||a - target||^2, value likewise.

    The best sequence is the target at every step. `with_pi` adds a (noisy) policy prior.
    """

    def __init__(self, action_dim: int, with_pi: bool = False, pi_noise: float = 0.3) -> None:
        self.action_spec = ActionSpec(action_dim, False)
        self.discount = 0.9
        self.pi_calls = 0
        if with_pi:
            self.pi_noise = pi_noise
            self.pi = self._pi

    def imagine_step(self, state: State, action: Tensor):
        target = state.tensors["target"]
        reward = -((action - target) ** 2).sum(-1)
        return state, {"reward": reward}

    def transition(self, state: State, action: Tensor) -> State:
        return state

    def value(self, state: State, action: Tensor) -> Tensor:
        return -((action - state.tensors["target"]) ** 2).sum(-1)

    def _pi(self, state: State) -> Tensor:
        self.pi_calls += 1
        t = state.tensors["target"]
        return (t + self.pi_noise * torch.randn_like(t)).clamp(-1, 1)


class DiscreteStub:
    """Discrete actions: reward 1 when the one-hot action equals the env's target index."""

    def __init__(self, n: int) -> None:
        self.action_spec = ActionSpec(n, True)
        self.discount = 0.9

    def imagine_step(self, state: State, action: Tensor):
        return state, {"reward": (action * state.tensors["target"]).sum(-1)}

    def value(self, state: State, action: Tensor) -> Tensor:
        return (action * state.tensors["target"]).sum(-1)


def planner(**kw) -> MPPI:
    args = dict(samples=256, elites=32, pi_trajs=0, generator=torch.Generator().manual_seed(0))
    args.update(kw)
    return MPPI(**args)


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_finds_quadratic_optimum_batched(batch: int) -> None:
    target = torch.rand(batch, 2) * 1.6 - 0.8
    act = planner(iterations=8).plan(QuadraticStub(2), State({"target": target}), eval_mode=True)
    assert act.shape == (batch, 2)
    assert torch.allclose(act, target, atol=0.08)


def test_defaults_match_tdmpc2() -> None:
    m = MPPI()
    got = (m.horizon, m.iterations, m.samples, m.elites, m.pi_trajs)
    assert got == (3, 6, 512, 64, 24)
    assert (m.std_min, m.std_max, m.temperature) == (0.05, 2.0, 0.5)


def test_policy_prior_trajectories_are_used() -> None:
    target = torch.tensor([[0.3, -0.4], [-0.7, 0.2]])
    stub = QuadraticStub(2, with_pi=True, pi_noise=0.05)
    act = planner(pi_trajs=24, iterations=4).plan(stub, State({"target": target}), True)
    assert stub.pi_calls > 0
    assert torch.allclose(act, target, atol=0.08)


def test_train_mode_adds_exploration_noise_eval_is_deterministic() -> None:
    target = torch.tensor([[0.2, 0.1]])
    state = State({"target": target})
    e1 = planner().plan(QuadraticStub(2), state, eval_mode=True)
    e2 = planner().plan(QuadraticStub(2), state, eval_mode=True)
    assert torch.equal(e1, e2)
    trains = torch.stack(
        [
            planner(generator=torch.Generator().manual_seed(s)).plan(QuadraticStub(2), state)
            for s in range(8)
        ]  # fmt: skip
    )
    assert trains.std(0).max() > 0.01  # noise with the final std (>= std_min)


def test_warm_start_shifted_mean_and_reset() -> None:
    target = torch.tensor([[0.5, -0.5], [0.1, 0.3]])
    state = State({"target": target})
    m = planner(iterations=6)
    m.plan(QuadraticStub(2), state, True)
    prev = m.last_mean.clone()
    assert prev.shape == (2, 3, 2)
    init = m._initial_mean(2, 2, torch.device("cpu"))
    assert torch.equal(init[:, :-1], prev[:, 1:])
    assert torch.equal(init[:, -1], torch.zeros(2, 2))
    # a warm-started single iteration is closer than a cold one
    warm = planner(iterations=1, std_max=0.1)
    warm._prev = prev.clone()
    cold = planner(iterations=1, std_max=0.1)
    err_w = (warm.plan(QuadraticStub(2), state, True) - target).abs().max()
    err_c = (cold.plan(QuadraticStub(2), state, True) - target).abs().max()
    assert err_w < err_c
    m.reset(torch.tensor([True, False]))
    assert torch.equal(m._prev[0], torch.zeros(3, 2)) and torch.equal(m._prev[1], prev[1])
    with pytest.raises(SpecError, match="mask"):
        m.reset(torch.tensor([True]))
    m.reset()
    assert m._prev is None


def test_discrete_actions_find_target_index() -> None:
    idx = torch.tensor([2, 0, 4])
    target = torch.nn.functional.one_hot(idx, 5).float()
    act = planner(iterations=4).plan(DiscreteStub(5), State({"target": target}), True)
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

    act = planner(iterations=6).plan(Terminating(2), State({"target": torch.zeros(1, 2)}), True)
    assert act[0, 0] <= 0.0


def test_bad_config_and_model() -> None:
    with pytest.raises(ConfigError, match="elites"):
        MPPI(samples=8, elites=16)
    with pytest.raises(ConfigError, match="pi_trajs"):
        MPPI(samples=8, elites=4, pi_trajs=8)
    with pytest.raises(SpecError, match="MPPI needs"):
        planner().plan(object(), State({"target": torch.zeros(1, 2)}))

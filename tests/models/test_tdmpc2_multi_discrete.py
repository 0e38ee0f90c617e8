"""TD-MPC2 with MultiDiscrete actions: one categorical per group in the policy prior and in MPPI,
the agent's update and `predict`, and a bandit that is only solved by learning per-group choices.
"""

from __future__ import annotations

import tempfile
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

import worldflux
from worldflux.agents import make_agent
from worldflux.agents.tdmpc2 import TDMPC2Agent
from worldflux.core.batch import Batch
from worldflux.core.registry import create_world_model
from worldflux.core.state import State
from worldflux.models.tdmpc2 import TDMPC2

OBS = spaces.Box(-1.0, 1.0, (5,), np.float32)
ACTION = spaces.MultiDiscrete([3, 4])
GROUPS = (3, 4)  # A = 7: the one-hots of 3 and 4 choices, concatenated
BEST = (2, 1)  # the bandit's only rewarded action


def model(seed: int = 0) -> TDMPC2:
    m = create_world_model("tdmpc2:debug", OBS, ACTION, seed=seed)
    assert isinstance(m, TDMPC2)
    return m


def assert_one_hot_per_group(action: torch.Tensor, exact: bool = True) -> None:
    """One 1 per group; not `exact`: up to the straight-through term's rounding (~1e-7)."""
    hard = action.detach() if exact else action.detach().round()
    torch.testing.assert_close(action.detach(), hard, rtol=0.0, atol=1e-6)
    assert action.shape[-1] == 7 and set(hard.unique().tolist()) <= {0.0, 1.0}
    for part in hard.split(GROUPS, -1):
        assert torch.equal(part.sum(-1), torch.ones(part.shape[:-1]))


@pytest.mark.parametrize("lead", [(), (3,), (2, 5)])
def test_pi_is_one_categorical_per_group(lead: tuple[int, ...]) -> None:
    m = model()
    torch.manual_seed(0)
    z = m.encode(torch.rand(*lead, 5).reshape(-1, 5) * 2 - 1).tensors["latent"]
    z = z.reshape(*lead, -1)
    action, info = m.pi(z, sample=True)
    assert action.shape == (*lead, 7)
    assert_one_hot_per_group(action, exact=False)
    assert_one_hot_per_group(m.pi(z, sample=False)[0], exact=False)
    logits = m.pi_net(z)
    dists = [torch.distributions.Categorical(logits=g) for g in logits.split(GROUPS, -1)]
    mode = torch.cat([torch.nn.functional.one_hot(d.probs.argmax(-1), d.probs.shape[-1])
                      for d in dists], -1).float()  # fmt: skip
    assert torch.equal(info["mean"], mode)
    entropy = sum(d.entropy() for d in dists)[..., None]  # (..., 1): summed over the groups
    torch.testing.assert_close(info["entropy"], entropy)
    torch.testing.assert_close(info["scaled_entropy"], entropy * 7)


def test_pi_straight_through_gradient_and_exact_policy() -> None:
    m = model()
    z = m.encode(torch.rand(8, 5)).tensors["latent"].detach()
    action, _ = m.pi(z)
    (action * torch.arange(7.0)).sum().backward()  # reaches the logits through the softmaxes
    assert m.pi_net[-1].weight.grad is not None and m.pi_net[-1].weight.grad.abs().sum() > 0
    state = State({"latent": z})
    for sample in (True, False):
        exact = m.policy(state, sample=sample)
        assert exact.grad_fn is None or not exact.requires_grad
        assert_one_hot_per_group(exact)
    assert_one_hot_per_group(m.decode(state, ["action"])["action"])


def test_mppi_and_predict_give_valid_multi_discrete_actions() -> None:
    torch.manual_seed(0)
    agent = make_agent("tdmpc2:debug", OBS, ACTION, seed=0)
    obs = torch.rand(4, 5) * 2 - 1
    for explore in (True, False):
        action, _ = agent.act(obs, explore=explore)
        assert action.shape == (4, 7)
        assert_one_hot_per_group(action)
    assert isinstance(agent, TDMPC2Agent) and agent.planner.last_mean is not None
    for part in agent.planner.last_mean.split(GROUPS, -1):
        torch.testing.assert_close(part.sum(-1), torch.ones(part.shape[:-1]))
    env_action, _ = agent.predict(OBS.sample(), deterministic=True)
    assert env_action.shape == (2,) and ACTION.contains(env_action.astype(np.int64))
    batch_actions, _ = agent.predict(np.stack([OBS.sample() for _ in range(3)]))
    assert batch_actions.shape == (3, 2)
    assert all(ACTION.contains(a.astype(np.int64)) for a in batch_actions)


def test_one_update_is_finite() -> None:
    torch.manual_seed(0)
    agent = make_agent("tdmpc2:debug", OBS, ACTION, seed=0, agent_options={"batch_size": 4})
    b, t = 4, agent.seq_len
    gen = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randint(0, g, (b, t), generator=gen) for g in GROUPS], -1)
    false = torch.zeros(b, t, dtype=torch.bool)
    batch = Batch(obs=torch.rand(b, t, 5, generator=gen) * 2 - 1, action=idx,
                  reward=torch.randn(b, t, generator=gen), is_first=false,
                  is_terminal=false, is_last=false)  # fmt: skip
    before = [p.detach().clone() for p in agent.model.pi_net.parameters()]
    metrics = agent.update(batch)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values())
    assert metrics["nonfinite"] == 0.0 and float(metrics["pi_entropy"]) > 0
    after = list(agent.model.pi_net.parameters())
    assert any(not torch.equal(x, y) for x, y in zip(before, after, strict=True))


class MultiBandit(gymnasium.Env):
    """Constant observation; reward 1 only for action `BEST` of MultiDiscrete([3, 4]) (1 of 12
    actions), else 0; 4 steps per episode (truncated). A random policy earns 1/3 per episode."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = ACTION
        self.t = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.ones(2, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        reward = float(tuple(np.asarray(action).tolist()) == BEST)
        return np.ones(2, np.float32), reward, False, self.t >= 4, {}


gymnasium.register("worldflux-test/MultiBandit-v0", entry_point=MultiBandit)


def greedy_bandit_action(seed: int, act: str = "mppi", frozen: bool = False) -> tuple[int, ...]:
    """The deterministic action of TD-MPC2 (debug, lr 1e-3) after a short `worldflux.train`
    run on `MultiBandit`. `act`: ``mppi`` plans without the prior's candidates (so the planner
    alone must find the action), ``policy`` is the prior's mode; `frozen`: learning rate 0
    (the updates run, the weights stay put)."""
    model = {"model.lr": 0.0 if frozen else 1e-3, "model.num_pi_trajs": 0 if act == "mppi" else 4}
    with tempfile.TemporaryDirectory() as tmp:
        agent = worldflux.train(
            "tdmpc2:debug", "worldflux-test/MultiBandit-v0", steps=STEPS, seed=seed,
            run_dir=tmp, seed_steps=SEED_STEPS, updates_per_step=1.0, eval_every=0,
            checkpoint_every=10**9, progress=False, tensorboard=False, save_replay=False,
            overrides={**model, "agent.batch_size": 32, "agent.act": act},
        )  # fmt: skip
    action, _ = agent.predict(np.ones(2, np.float32), deterministic=True)
    return tuple(int(a) for a in action)


STEPS, SEED_STEPS = 240, 120


@pytest.mark.parametrize("act", ["mppi", "policy"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learns_the_multi_discrete_bandit(seed: int, act: str) -> None:
    assert greedy_bandit_action(seed, act) == BEST


@pytest.mark.slow
@pytest.mark.parametrize("act", ["mppi", "policy"])
def test_frozen_weights_do_not_solve_the_bandit(act: str) -> None:
    """The bar above is passed by learning: at learning rate 0 no 3 seeds all hit 1 of 12."""
    assert [greedy_bandit_action(seed, act, frozen=True) for seed in (0, 1, 2)] != [BEST] * 3

"""`Agent.predict`: raw env observations in (unbatched or batched), env actions out."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from worldflux.agents import make_agent
from worldflux.agents.predict import batch_obs
from worldflux.core.exceptions import SpecError
from worldflux.core.state import State
from worldflux.envs import make_env


def agent_for(env_id: str, model: str = "tdmpc2:debug", **options):
    env = make_env(env_id)
    native = env.native_action_space  # e.g. Pendulum's Box(-2, 2)
    return make_agent(model, env.observation_space, env.action_space, seed=0,
                      agent_options=options, native_action_space=native)  # fmt: skip


def model_actions(agent, obs: np.ndarray, seed: int) -> np.ndarray:
    """The agent's model-format actions (N, A) for a batch, through `predict` with the native
    space set to the model format."""
    native, agent.native_action_space = agent.native_action_space, None
    try:
        torch.manual_seed(seed)
        return np.asarray(agent.predict(obs)[0])
    finally:
        agent.native_action_space = native


@pytest.mark.parametrize("model", ["tdmpc2:debug", "dreamerv3:debug"])
def test_box_actions_are_rescaled_into_the_env_bounds(model: str) -> None:
    agent = agent_for("Pendulum-v1", model, **({"act": "policy"} if "tdmpc2" in model else {}))
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=0)  # float32 (3,), what a plain Gymnasium env returns
    state = None
    for _ in range(5):
        action, state = agent.predict(obs, state)
        assert isinstance(action, np.ndarray) and action.shape == (1,)
        assert action.dtype == np.float32 and env.action_space.contains(action)
        obs, *_ = env.step(action)
    batch = np.stack([obs, -obs, 2 * obs])  # (3, 3)
    torch.manual_seed(1)
    actions, _ = agent.predict(batch)
    assert actions.shape == (3, 1) and np.all(np.abs(actions) <= 2.0)
    # rescaled from the model's [-1, 1] to Pendulum's [-2, 2]
    np.testing.assert_allclose(actions, 2.0 * model_actions(agent, batch, 1), rtol=1e-6)


def test_asymmetric_box_bounds_and_shape() -> None:
    agent = agent_for("Pendulum-v1", act="policy")
    agent.native_action_space = spaces.Box(3.0, 7.0, (1, 1), np.float64)
    obs = np.random.default_rng(0).normal(size=(4, 3))  # float64 obs are cast
    actions, _ = agent.predict(obs)
    assert actions.shape == (4, 1, 1) and actions.dtype == np.float64
    assert np.all((actions >= 3.0) & (actions <= 7.0))
    expected = 3.0 + (model_actions(agent, obs, 0) + 1.0) * 2.0  # low + (a + 1) / 2 * (high - low)
    np.testing.assert_allclose(actions.reshape(4, 1), expected, rtol=1e-6)


@pytest.mark.parametrize("model", ["tdmpc2:debug", "dreamerv3:debug"])
def test_discrete_actions_are_ints_the_env_accepts(model: str) -> None:
    agent = agent_for("CartPole-v1", model, **({"act": "policy"} if "tdmpc2" in model else {}))
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=0)
    state = None
    for _ in range(5):
        action, state = agent.predict(obs, state)
        assert type(action) is int and env.action_space.contains(action)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, state = env.reset()[0], None
    actions, _ = agent.predict(torch.as_tensor(np.stack([obs, obs])))  # batched torch obs
    assert actions.dtype == np.int64 and actions.shape == (2,) and set(actions) <= {0, 1}
    agent.native_action_space = spaces.Discrete(2, start=5)  # the space's start is added
    assert agent.predict(obs)[0] in (5, 6)


def test_dict_observations_unbatched_and_batched() -> None:
    obs_space = spaces.Dict({
        "image": spaces.Box(0, 255, (64, 64, 3), np.uint8),
        "state": spaces.Box(-np.inf, np.inf, (3,), np.float32),
    })  # fmt: skip
    agent = make_agent("dreamerv3:debug", obs_space, spaces.Box(-1, 1, (2,), np.float32), seed=0,
                       native_action_space=spaces.Box(-4.0, 4.0, (2,), np.float32))  # fmt: skip
    one = obs_space.sample()
    action, state = agent.predict(one)
    assert action.shape == (2,) and np.all(np.abs(action) <= 4.0)
    assert isinstance(state, State) and state.batch_size == 1
    batch = {k: torch.as_tensor(np.stack([v, v, v])) for k, v in one.items()}
    actions, state = agent.predict(batch, None, deterministic=False)
    assert actions.shape == (3, 2) and state is not None and state.batch_size == 3
    with pytest.raises(SpecError, match=r"missing keys \['state'\]"):
        agent.predict({"image": one["image"]})
    with pytest.raises(SpecError, match="batch all or none"):
        agent.predict({"image": one["image"], "state": batch["state"]})
    with pytest.raises(SpecError, match=r"obs\['image'\]: images must be uint8"):
        agent.predict({"image": one["image"].astype(np.float32), "state": one["state"]})


def test_recurrent_state_is_carried_by_the_caller() -> None:
    """DreamerV3: predict over an episode equals act with the State threaded through, and the
    State it returns is what makes the next action depend on the past."""
    agent = agent_for("Pendulum-v1", "dreamerv3:debug")
    agent.train(False)
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(4, 3)).astype(np.float32)
    torch.manual_seed(3)
    state, got = None, []
    for obs in observations:
        action, state = agent.predict(obs, state)
        got.append(action)
    torch.manual_seed(3)
    act_state, want = None, []
    for t, obs in enumerate(observations):
        first = torch.tensor([t == 0])
        model_obs, _ = batch_obs(obs, agent.model.obs_spec, agent.model.device, torch.float32)
        a, act_state = agent.act(model_obs, act_state, explore=False, is_first=first)
        want.append(2.0 * a[0].numpy())  # Pendulum: [-1, 1] -> [-2, 2]
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-6)
    assert isinstance(state, State) and set(state.tensors) >= {"deter", "stoch", "prev_action"}
    torch.manual_seed(4)
    _, continued = agent.predict(observations[0], state)
    torch.manual_seed(4)
    _, fresh = agent.predict(observations[0], None)
    assert continued is not None and fresh is not None
    assert not torch.equal(continued.tensors["deter"], fresh.tensors["deter"])
    torch.manual_seed(4)
    _, restarted = agent.predict(observations[0], state, episode_start=True)
    assert restarted is not None and torch.equal(restarted.tensors["deter"], fresh.tensors["deter"])


def test_bad_observations_name_what_was_expected() -> None:
    agent = agent_for("Pendulum-v1", act="policy")
    with pytest.raises(
        SpecError, match=r"obs: expected shape \(3,\) or \(N, \*\(3,\)\), got \(4,\)"
    ):
        agent.predict(np.zeros(4, np.float32))
    with pytest.raises(SpecError, match="got 2"):
        agent.predict(np.zeros((3, 3), np.float32), episode_start=[True, False])
    with pytest.raises(SpecError, match=r"got \(1, 2, 3\)"):
        agent.predict(np.zeros((1, 2, 3), np.float32))


def test_predict_leaves_training_mode_alone() -> None:
    agent = agent_for("Pendulum-v1", act="policy")
    agent.train(True)
    agent.predict(np.zeros(3, np.float32))
    assert agent.model.training

"""`DreamEnv` / `DreamVectorEnv`: a trained world model as a Gymnasium env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from worldflux.core.exceptions import ConfigError
from worldflux.core.registry import create_world_model
from worldflux.envs.dream import DreamEnv, DreamVectorEnv

VEC = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
IMG = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)


def _model(family: str, obs: gym.Space = VEC, action: gym.Space | None = None):  # noqa: ANN202
    return create_world_model(f"{family}:debug", obs, action or gym.spaces.Discrete(2), seed=0)


def _starts(space: gym.Space, n: int = 16) -> np.ndarray:
    return np.stack([space.sample() for _ in range(n)])


@pytest.mark.parametrize("family", ["dreamerv3", "tdmpc2"])
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_passes_gymnasiums_env_checker(family: str) -> None:
    env = DreamEnv(_model(family), _starts(VEC), max_steps=20)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_decoded_observations_live_in_the_real_spaces() -> None:
    env = DreamEnv(_model("dreamerv3", IMG), _starts(IMG, 4), max_steps=5)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert DreamEnv(_model("tdmpc2"), _starts(VEC)).observation_space.shape == (
        _model("tdmpc2").features(_model("tdmpc2").initial_state(1)).shape[-1],
    )  # TD-MPC2 has no decoder: latent features


def test_same_seed_same_episode_and_truncation() -> None:
    def episode(seed: int) -> list[float]:
        env = DreamEnv(_model("dreamerv3"), _starts(VEC), max_steps=7, continue_threshold=1e-6)
        env.reset(seed=seed)
        rewards, done = [], False
        while not done:
            _, r, term, trunc, _ = env.step(1)
            rewards.append(r)
            done = term or trunc
        assert trunc and not term and len(rewards) == 7
        return rewards

    assert episode(3) == episode(3)


def test_vector_env_autoresets_finished_rows() -> None:
    model = _model("dreamerv3")
    env = DreamVectorEnv(model, _starts(VEC), 4, max_steps=3, continue_threshold=1e-6)
    env.reset(seed=0)
    for _ in range(3):
        obs, reward, term, trunc, info = env.step(np.array([0, 1, 0, 1]))
        assert obs.shape == (4, 4) and reward.shape == (4,)
    assert trunc.all() and info["_final_obs"].all() and (env.steps == 0).all()
    with torch.no_grad():  # the rows were re-encoded from real starts, not left imagined
        assert env.state is not None and env.state.batch_size == 4


def test_bad_arguments_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="predicts no reward"):
        DreamEnv(_model("jepa"), _starts(VEC))
    with pytest.raises(ConfigError, match="observation: expected one of"):
        DreamEnv(_model("dreamerv3"), _starts(VEC), observation="pixels")
    with pytest.raises(ConfigError, match="starts: expected an array"):
        DreamEnv(_model("dreamerv3"), {"obs": _starts(VEC)})

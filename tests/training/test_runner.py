"""`EnvRunner` hands the agent observations in the env's own form, and resumes from old states."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import Tensor

from worldflux.core.exceptions import SpecError
from worldflux.core.spec import ObsSpec
from worldflux.envs import make_env
from worldflux.envs.gym import GymEnv
from worldflux.training.runner import EnvRunner, obs_to_numpy, stack_obs


class NativeCounter(gym.Env):
    """A Dict-observation env: ``{"pos": [t], "image": frame t}``; 5 steps per episode. Without a
    state pair, its state cannot be snapshotted (as if it lived in a simulator)."""

    observation_space = gym.spaces.Dict(
        {
            "pos": gym.spaces.Box(-100, 100, (1,), np.float32),
            "image": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
        }
    )
    action_space = gym.spaces.Discrete(2)

    def _obs(self) -> dict[str, np.ndarray]:
        return {
            "pos": np.array([self.t], np.float32),
            "image": np.full((8, 8, 3), self.t, np.uint8),
        }

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> Any:
        self.t += 1
        return self._obs(), 1.0, self.t >= 5, False, {}


class DictCounter(NativeCounter):
    """`NativeCounter` with the ``get_state`` / ``set_state`` pair exact resume needs."""

    def get_state(self) -> dict[str, Any]:
        return {"t": self.t}

    def set_state(self, state: dict[str, Any]) -> None:
        self.t = state["t"]


def _box_runner(n: int = 2) -> EnvRunner:
    return EnvRunner(lambda i: make_env("CartPole-v1"), n, seed=0)


def _dict_runner(n: int = 3) -> EnvRunner:
    return EnvRunner(lambda i: GymEnv(DictCounter(), size=(8, 8)), n, seed=0)


def test_box_observations_reach_the_agent_as_one_tensor() -> None:
    runner = _box_runner()
    obs, is_first = runner.observe("cpu")
    assert isinstance(obs, Tensor) and obs.shape == (2, 4) and obs.dtype == torch.float32
    assert is_first.tolist() == [True, True]
    rows = [row.obs for _, row in runner.rows]
    np.testing.assert_array_equal(obs.numpy(), np.stack(rows))  # exactly what the envs gave
    runner.step(np.tile(np.array([[1.0, 0.0]], np.float32), (2, 1)))
    obs, is_first = runner.observe("cpu")
    assert isinstance(obs, Tensor) and not is_first.any()


def test_dict_observations_reach_the_agent_as_a_dict() -> None:
    runner = _dict_runner()
    runner.step(np.tile(np.array([[1.0, 0.0]], np.float32), (3, 1)))
    obs, _ = runner.observe("cpu")
    assert isinstance(obs, dict) and sorted(obs) == ["image", "pos"]
    assert obs["image"].shape == (3, 8, 8, 3) and obs["image"].dtype == torch.uint8
    assert obs["pos"].tolist() == [[1.0]] * 3


def test_obs_to_numpy_checks_the_form_at_the_env_boundary() -> None:
    box = ObsSpec.from_space(gym.spaces.Box(-1, 1, (3,), np.float32))
    out = obs_to_numpy(np.arange(3, dtype=np.float64)[::-1], box)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.flags.c_contiguous
    with pytest.raises(SpecError, match=r"env observation: expected one array"):
        obs_to_numpy({"obs": np.zeros(3)}, box)
    spec = ObsSpec.from_space(DictCounter.observation_space)
    with pytest.raises(SpecError, match=r"env observation: missing keys \['pos'\]"):
        obs_to_numpy({"image": np.zeros((8, 8, 3), np.uint8)}, spec)


def test_stack_obs_keeps_the_form() -> None:
    arrays = [np.full(2, i, np.float32) for i in range(3)]
    stacked = stack_obs(arrays)
    assert isinstance(stacked, Tensor) and stacked[:, 0].tolist() == [0.0, 1.0, 2.0]
    dicts = [{"a": a, "b": a[:1]} for a in arrays]
    stacked_d = stack_obs(dicts)
    assert isinstance(stacked_d, dict) and stacked_d["b"].shape == (3, 1)


@pytest.mark.parametrize("make", [_box_runner, _dict_runner])
def test_state_dict_restores_the_observations(make: Any) -> None:
    a, b = make(), make()
    actions = np.tile(np.array([[1.0, 0.0]], np.float32), (a.num_envs, 1))
    for _ in range(3):
        a.step(actions)
    assert b.load_state_dict(a.state_dict(), [0] * b.num_envs) == []
    for runner in (a, b):
        runner.step(actions)
    obs_a, first_a = a.observe("cpu")
    obs_b, first_b = b.observe("cpu")
    assert torch.equal(first_a, first_b)
    if isinstance(obs_a, dict):
        assert all(torch.equal(obs_a[k], obs_b[k]) for k in obs_a)  # type: ignore[index]
    else:
        assert torch.equal(obs_a, obs_b)  # type: ignore[arg-type]


def test_checkpoints_from_before_hold_box_observations_wrapped() -> None:
    """Runner states saved before the one-form change hold ``{"obs": array}`` per env for a
    Box space; they still load, as the plain arrays."""
    a, b = _box_runner(), _box_runner()
    a.step(np.tile(np.array([[0.0, 1.0]], np.float32), (2, 1)))
    old = a.state_dict()
    old["obs"] = [{"obs": o} for o in old["obs"]]
    b.load_state_dict(old, [0, 0])
    assert all(isinstance(o, np.ndarray) for o in b.obs)
    assert torch.equal(a.observe("cpu")[0], b.observe("cpu")[0])  # type: ignore[arg-type]


def test_an_env_that_cannot_be_snapshotted_restarts_its_episode_and_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Copying attributes would miss native state and resume a different episode silently:
    such an env starts a fresh, seeded episode instead, and the run says so."""

    a = EnvRunner(lambda i: GymEnv(NativeCounter(), size=(8, 8)), 2, seed=0)
    for _ in range(3):
        a.step(np.zeros((2, 2), np.float32))
    snap = a.state_dict()
    assert all(env == {"restart": "NativeCounter"} for env in snap["envs"])
    b = EnvRunner(lambda i: GymEnv(NativeCounter(), size=(8, 8)), 2, seed=0)
    assert b.load_state_dict(snap, [7, 8]) == [0, 1]
    assert "NativeCounter" in capsys.readouterr().err
    assert b.is_first.all() and [i for i, row in b.rows] == [0, 1]
    assert all(row.is_first for _, row in b.rows)

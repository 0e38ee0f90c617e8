"""A trivially solvable task for learning smoke tests: say which of two lights is on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from worldflux.envs import GymEnv


class MatchLight(gymnasium.Env[np.ndarray, int]):
    """Obs: one-hot of the lit light (2,). Action: 0/1. Reward 1 for naming the lit light.

    Episodes last `length` steps (truncated). A random policy earns 0.5 per step.
    """

    def __init__(self, length: int = 8) -> None:
        self.observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.length = length
        self.t = 0
        self.light = 0

    def _obs(self) -> np.ndarray:
        return np.eye(2, dtype=np.float32)[self.light]

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t, self.light = 0, int(self.np_random.integers(2))
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(int(action) == self.light)
        self.t += 1
        self.light = int(self.np_random.integers(2))
        return self._obs(), reward, False, self.t >= self.length, {}


def make_match_env(_: int = 0) -> GymEnv:
    return GymEnv(MatchLight())


class SwitchLight(gymnasium.Env[np.ndarray, int]):
    """Two switches; the light of the switch pressed last is on. Obs: one-hot of the lit light
    (2,), random at reset. Reward 1 for arriving with light `good` on. A random policy earns 0.5
    per step; pressing `good` every step earns 1.

    Unlike `MatchLight`, the reward is a function of the observation it arrives with, so a world
    model reads it off the posterior of that observation, and imagination only has to carry the
    action one step forward."""

    def __init__(self, good: int, length: int = 8) -> None:
        self.observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.good, self.length = good, length
        self.t = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.eye(2, dtype=np.float32)[int(self.np_random.integers(2))], {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        obs = np.eye(2, dtype=np.float32)[int(action)]
        return obs, float(int(action) == self.good), False, self.t >= self.length, {}


def make_switch_env(good: int) -> Callable[[int], GymEnv]:
    """An env factory (index -> env) for `SwitchLight` with the given good light."""
    return lambda _=0: GymEnv(SwitchLight(good))

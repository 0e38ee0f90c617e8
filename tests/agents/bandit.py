"""A trivially solvable task for learning smoke tests: say which of two lights is on."""

from __future__ import annotations

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

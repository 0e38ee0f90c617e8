"""A trivially solvable goal-reaching task for the JEPA smoke test: walk a point to a goal.

Vector observations, so JEPA's encoder is a small MLP and the test stays fast.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from worldflux.core.batch import Batch


class PointGoal(gymnasium.Env[np.ndarray, np.ndarray]):
    """A point in the unit square; an action in [-1, 1]^2 moves it by `max_step` * action.

    Obs: the position [x, y] (2,). (Positions on one ray from the origin, such as (0.2, 0.2)
    and (0.6, 0.6), once looked the same to the vector encoder, whose first layer had no bias
    before its norm; this task caught it.) The goal lies `goal_distance` from the start;
    `goal_observation()` is the observation there.
    Reward 1 on reaching the goal (distance <= `success_radius`), which terminates the episode;
    `max_steps` truncates it.
    """

    def __init__(
        self,
        max_step: float = 0.1,
        goal_distance: float = 0.4,
        success_radius: float = 0.1,
        max_steps: int = 15,
    ) -> None:
        self.observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.max_step, self.goal_distance = max_step, goal_distance
        self.success_radius, self.max_steps = success_radius, max_steps
        self.pos = np.full(2, 0.5)
        self.goal = np.full(2, 0.5)
        self.t = 0

    @staticmethod
    def observe(pos: np.ndarray) -> np.ndarray:
        """Positions (..., 2) -> observations (..., 2)."""
        return np.asarray(pos, np.float32)

    def move(self, pos: np.ndarray, action: np.ndarray) -> np.ndarray:
        """Positions (..., 2) after actions (..., 2), kept inside the square."""
        return np.clip(pos + self.max_step * np.clip(action, -1.0, 1.0), 0.0, 1.0)

    def distance(self) -> float:
        return float(np.linalg.norm(self.pos - self.goal))

    def goal_observation(self) -> np.ndarray:
        return self.observe(self.goal)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        rng = self.np_random
        while True:
            self.pos = rng.uniform(0.1, 0.9, 2)
            angle = rng.uniform(0.0, 2 * np.pi)
            self.goal = self.pos + self.goal_distance * np.array([np.cos(angle), np.sin(angle)])
            if np.all((self.goal >= 0.1) & (self.goal <= 0.9)):
                break
        self.t = 0
        return self.observe(self.pos), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.pos = self.move(self.pos, np.asarray(action, np.float64))
        self.t += 1
        success = self.distance() <= self.success_radius
        truncated = self.t >= self.max_steps and not success
        return self.observe(self.pos), float(success), success, truncated, {"success": success}


class RandomWalks:
    """Offline data: `episodes` random-action walks of `length` steps from uniform starts.

    `sample(batch_size, seq_len)` -> a `Batch` of windows, obs (B, T, 2) and action (B, T, 2);
    row t's action is the one that led to obs t (zeros on an episode's first row).
    """

    def __init__(self, episodes: int, length: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        env = PointGoal()
        pos = np.zeros((episodes, length + 1, 2))
        act = np.zeros((episodes, length + 1, 2), np.float32)
        pos[:, 0] = self.rng.uniform(0.0, 1.0, (episodes, 2))
        act[:, 1:] = self.rng.uniform(-1.0, 1.0, (episodes, length, 2))
        for t in range(1, length + 1):
            pos[:, t] = env.move(pos[:, t - 1], act[:, t])
        self.obs, self.act = torch.from_numpy(env.observe(pos)), torch.from_numpy(act)

    def sample(self, batch_size: int, seq_len: int) -> Batch:
        episodes, rows = self.obs.shape[:2]
        ep = torch.from_numpy(self.rng.integers(0, episodes, batch_size))[:, None]  # (B, 1)
        start = torch.from_numpy(self.rng.integers(0, rows - seq_len + 1, batch_size))
        idx = start[:, None] + torch.arange(seq_len)  # (B, T) row indices
        return Batch(
            obs=self.obs[ep, idx],  # (B, T, 2)
            action=self.act[ep, idx],  # (B, T, 2)
            reward=torch.zeros(batch_size, seq_len),
            is_first=idx == 0,
            is_terminal=torch.zeros(batch_size, seq_len, dtype=torch.bool),
            is_last=idx == rows - 1,
        ).validate()

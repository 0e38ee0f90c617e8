"""`VectorEnv`: N environment copies stepped in one process, one `StepBatch` row per copy.

Episode boundaries (the "next-step" autoreset, as in Gymnasium 1.x's default ``NEXT_STEP`` mode,
made explicit here):

- ``step(actions)`` returns, for each copy, the row of arriving at its next observation. When that
  row has ``is_last`` (terminated or truncated), the copy is NOT reset in the same call: its last
  observation is returned as a normal row, so the replay stores it.
- On the following ``step``, a copy whose previous row had ``is_last`` ignores its action and is
  reset instead; its row is the reset row: ``is_first`` True, zero action and reward.

So per copy the rows run ``first, mid, ..., last, first, mid, ...`` exactly as a single `Env`
driven by ``reset`` after ``is_last`` would produce them, and `Replay.add(batch)` stores them
unchanged. Copy ``i`` is seeded with ``seed + i``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.envs.base import Env, Step, StepBatch


class VectorEnv:
    """Steps `len(envs)` copies sequentially in this process (see the module docstring)."""

    def __init__(self, envs: Sequence[Env] | Sequence[Callable[[], Env]]) -> None:
        if len(envs) == 0:
            raise ConfigError("envs: expected at least one env (or env factory), got none")
        self.envs: list[Env] = [e if isinstance(e, Env) else e() for e in envs]
        first = self.envs[0]
        for i, e in enumerate(self.envs[1:], start=1):
            if e.observation_space != first.observation_space:
                raise SpecError(
                    f"envs[{i}]: observation_space {e.observation_space} differs from "
                    f"envs[0]'s {first.observation_space}"
                )
            if e.action_space != first.action_space:
                raise SpecError(
                    f"envs[{i}]: action_space {e.action_space} differs from "
                    f"envs[0]'s {first.action_space}"
                )
        self.observation_space: spaces.Space = first.observation_space
        self.action_space: spaces.Space = first.action_space
        self._needs_reset = np.ones(len(self.envs), bool)

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    def reset(self, seed: int | None = None) -> StepBatch:
        """Reset every copy (copy i with ``seed + i``); all rows are ``is_first``."""
        steps = [e.reset(None if seed is None else seed + i) for i, e in enumerate(self.envs)]
        self._needs_reset[:] = False
        return StepBatch.stack(steps)

    def step(self, actions: Any) -> StepBatch:
        """Step every copy with ``actions[i]``; copies that ended last call are reset instead.

        `actions` is (N,) indices or (N, A) vectors (numpy or torch).
        """
        if hasattr(actions, "detach"):
            actions = actions.detach().cpu().numpy()
        if len(actions) != self.num_envs:
            raise SpecError(
                f"actions: expected {self.num_envs} actions (one per env), got {len(actions)}"
            )
        steps: list[Step] = []
        for i, env in enumerate(self.envs):
            row = env.reset() if self._needs_reset[i] else env.step(actions[i])
            self._needs_reset[i] = row.is_last
            steps.append(row)
        return StepBatch.stack(steps)

    def sample_actions(self) -> np.ndarray:
        """Uniform random actions for every copy, from each copy's (seeded) action space."""
        return np.stack([np.asarray(e.action_space.sample()) for e in self.envs])

    def render(self, index: int = 0) -> np.ndarray:
        """RGB frame of copy `index`."""
        return self.envs[index].render()

    def close(self) -> None:
        for env in self.envs:
            env.close()

"""Crafter (Hafner, 2021) behind the `Env` contract: ``make_env("crafter:reward")``.

The `crafter` package speaks the old Gym API (``reset() -> obs``, ``step -> obs, reward, done,
info``) and seeds its worlds only in its constructor. `CrafterGym` adapts it to Gymnasium's API
(``reset(seed=...)`` builds the world sequence of that seed; ``terminated`` when the player dies,
``truncated`` at the episode length), and `GymEnv` does the rest (model-format actions, action
repeat, resizing). Ids: ``crafter:reward`` (the benchmark's reward: +1 per new achievement,
+-0.1 per health point) and ``crafter:noreward`` (reward 0, for unsupervised agents).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from worldflux.core.exceptions import ConfigError
from worldflux.core.options import check_options
from worldflux.envs.gym import GymEnv

TASKS = {"crafter:reward": True, "crafter:noreward": False}


class CrafterGym(gymnasium.Env):
    """`crafter.Env` with the Gymnasium API (see the module docstring).

    Args:
        reward: give the benchmark's reward (False: always 0).
        size: (H, W) of the rendered observation (at least 64x64 draws every cell).
        length: steps before an episode is cut (truncated); Crafter's default 10,000.
        area: world size in cells. view: the player's view in cells.
    """

    metadata = {"render_modes": ["rgb_array"]}  # noqa: RUF012 - gymnasium's convention

    def __init__(
        self,
        reward: bool = True,
        size: tuple[int, int] = (64, 64),
        length: int = 10_000,
        area: tuple[int, int] = (64, 64),
        view: tuple[int, int] = (9, 9),
        render_mode: str | None = "rgb_array",
    ) -> None:
        try:
            import crafter
        except ImportError as err:
            raise ConfigError(
                "env: crafter ids need the crafter package: pip install 'worldflux[crafter]'"
            ) from err
        if not isinstance(length, int) or length < 1:
            raise ConfigError(f"env.length: expected an int >= 1, got {length!r}")
        self._make = lambda seed: crafter.Env(
            area=tuple(area), view=tuple(view), size=tuple(size), reward=reward,
            length=length, seed=seed,
        )  # fmt: skip
        self._env = self._make(None)
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, (*size, 3), np.uint8)
        self.action_space = spaces.Discrete(int(self._env.action_space.n))

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        del options
        if seed is not None:  # Crafter draws each episode's world from (seed, episode index)
            self._env = self._make(int(seed))
        return np.asarray(self._env.reset(), np.uint8), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, done, info = self._env.step(int(action))
        terminated = bool(info.get("discount", 1.0) == 0.0)  # the player died
        info = {"achievements": info["achievements"], "inventory": info["inventory"]}
        return (
            np.asarray(obs, np.uint8),
            float(reward),
            terminated,
            bool(done) and not terminated,
            info,
        )

    def render(self) -> np.ndarray:
        return np.asarray(self._env.render(), np.uint8)


def make_crafter(
    id: str,  # noqa: A002 - mirrors make_env
    *,
    image_size: tuple[int, int],
    action_repeat: int,
    seed: int | None,
    **kwargs: Any,
) -> GymEnv:
    """``crafter:reward`` / ``crafter:noreward`` as a `GymEnv`; kwargs go to `CrafterGym`."""
    if id not in TASKS:
        raise ConfigError(f"id: expected one of {sorted(TASKS)}, got {id!r}")
    kwargs.pop("render_mode", None)  # Crafter always renders
    check_options(CrafterGym, kwargs, "env.", skip={"reward", "size", "render_mode"})
    # Crafter draws 9x9 cells of at least 7 px: render at its own 64x64, resize in GymEnv
    env = CrafterGym(reward=TASKS[id], **kwargs)
    return GymEnv(env, size=image_size, action_repeat=action_repeat, seed=seed)

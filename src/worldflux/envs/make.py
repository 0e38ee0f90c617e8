"""`make_env` / `make_vector_env`: one entry point for every environment id.

Ids:
    ``"dmc:cartpole-swingup"``  dm_control suite, ``domain-task`` (`DMCEnv`)
    ``"atari:Pong"``            Atari through ale-py (`AtariEnv`)
    ``"worldflux/TwoRoom-v0"``  the 2-D two-room navigation task (a Gymnasium env)
    anything else              a Gymnasium id, e.g. ``"CartPole-v1"``, ``"Pendulum-v1"``
"""

from __future__ import annotations

from typing import Any

import gymnasium

from worldflux.core.exceptions import ConfigError
from worldflux.envs.base import Env
from worldflux.envs.gym import GymEnv
from worldflux.envs.vector import VectorEnv


def make_env(
    id: str,  # noqa: A002 - mirrors gymnasium.make
    *,
    seed: int | None = None,
    image: bool = False,
    action_repeat: int = 1,
    size: int | tuple[int, int] = 64,
    proprio: bool = False,
    **kwargs: Any,
) -> Env:
    """Create the environment `id` behind the `Env` contract.

    Args:
        seed: seed of the first reset. image: observe (size, size, 3) uint8 frames (Gymnasium and
        dm_control; Atari is always pixels). action_repeat: agent-step repeat (Atari: the frame
        skip, default 4). size: image side or (H, W). proprio: with `image`, also the state
        vector as ``{"image", "state"}``. kwargs: passed to the adapter (dm_control, Atari) or to
        ``gymnasium.make``.
    """
    if not isinstance(id, str) or not id:
        raise ConfigError(f"id: expected an environment id string, got {id!r}")
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if id.startswith("dmc:"):
        from worldflux.envs.dmc import DMCEnv

        domain, sep, task = id[4:].partition("-")
        if not sep or not domain or not task:
            raise ConfigError(
                f"id: expected 'dmc:<domain>-<task>', e.g. dmc:walker-walk, got {id!r}"
            )
        return DMCEnv(
            domain,
            task,
            image=image,
            proprio=proprio,
            size=hw,
            action_repeat=action_repeat,
            seed=seed,
            **kwargs,
        )
    if id.startswith("atari:"):
        from worldflux.envs.atari import AtariEnv

        if proprio:
            raise ConfigError("proprio: Atari has no state vector; use proprio=False")
        skip = kwargs.pop("frame_skip", 4 if action_repeat == 1 else action_repeat)
        return AtariEnv(id[6:], size=hw, frame_skip=skip, seed=seed, **kwargs)
    render_mode = "rgb_array" if image else kwargs.pop("render_mode", None)
    try:
        env = gymnasium.make(id, render_mode=render_mode, **kwargs)
    except gymnasium.error.Error as e:
        raise ConfigError(f"id: gymnasium cannot make {id!r}: {e}") from e
    return GymEnv(
        env, image=image, proprio=proprio, size=hw, action_repeat=action_repeat, seed=seed
    )


def make_vector_env(id: str, num_envs: int, *, seed: int | None = None, **kwargs: Any) -> VectorEnv:  # noqa: A002
    """`num_envs` copies of ``make_env(id, **kwargs)``; copy i is seeded ``seed + i`` on reset."""
    if num_envs < 1:
        raise ConfigError(f"num_envs: expected an integer >= 1, got {num_envs}")
    envs = [
        make_env(id, seed=None if seed is None else seed + i, **kwargs) for i in range(num_envs)
    ]
    return VectorEnv(envs)

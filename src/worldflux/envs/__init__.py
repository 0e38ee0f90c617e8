"""Environments behind one contract (`Env` producing `Step` rows; see `worldflux.envs.base`).

`make_env("CartPole-v1")`, `make_env("dmc:cartpole-swingup", image=True)`,
`make_env("atari:Pong")`, `make_env("worldflux/TwoRoom-v0")`; `make_vector_env(id, n)` for N
copies in one process. dm_control and Atari need the ``dmc`` / ``atari`` extras, imported lazily.
`DreamEnv(model, starts)` / `DreamVectorEnv`: a trained world model as a Gymnasium env.
"""

from __future__ import annotations

import gymnasium

from worldflux.envs.base import ActionConverter, Env, Step, StepBatch, resize_image
from worldflux.envs.dream import DreamEnv, DreamVectorEnv
from worldflux.envs.gym import GymEnv
from worldflux.envs.make import make_env, make_env_fn, make_vector_env
from worldflux.envs.vector import VectorEnv

# Registered by name so that importing worldflux.envs does not import the task module itself.
if "worldflux/TwoRoom-v0" not in gymnasium.registry:
    gymnasium.register(id="worldflux/TwoRoom-v0", entry_point="worldflux.envs.tworoom:TwoRoomEnv")

__all__ = [
    "make_env_fn",
    "ActionConverter",
    "DreamEnv",
    "DreamVectorEnv",
    "Env",
    "GymEnv",
    "Step",
    "StepBatch",
    "VectorEnv",
    "make_env",
    "make_vector_env",
    "resize_image",
]

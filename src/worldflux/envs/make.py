"""`make_env` / `make_vector_env`: one entry point for every environment id.

Ids:
    ``"dmc:cartpole-swingup"``  dm_control suite, ``domain-task`` (`DMCEnv`)
    ``"atari:Pong"``            Atari through ale-py (`AtariEnv`)
    ``"crafter:reward"``        Crafter (``crafter:noreward`` without rewards; the `crafter` extra)
    ``"minigrid:MiniGrid-Empty-5x5-v0"``  a Gymnasium id registered by a package: ``module:Id``
                               imports the module first (MiniGrid, highway-env, ...)
    ``"worldflux/TwoRoom-v0"``  the 2-D two-room navigation task (a Gymnasium env)
    anything else              a Gymnasium id, e.g. ``"CartPole-v1"``, ``"Pendulum-v1"``
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium
from gymnasium.envs.registration import load_env_creator

from worldflux.core.exceptions import ConfigError, WorldFluxError
from worldflux.core.options import check_options, matches
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
        ``gymnasium.make``; unknown keys and wrong types are a `ConfigError` naming the option.
        ``render_mode``: None or ``"rgb_array"`` (what video recording asks for) for every id;
        Gymnasium envs are made with it (always ``"rgb_array"`` with `image`), dm_control and
        Atari render offscreen anyway, so `Env.render()` gives RGB frames for all of them.
    """
    if not isinstance(id, str) or not id:
        raise ConfigError(f"id: expected an environment id string, got {id!r}")
    hw = _check_common(seed, image, action_repeat, size, proprio)
    seed = None if seed is None else int(seed)  # numpy integers -> int (gymnasium wants int)
    action_repeat, image, proprio = int(action_repeat), bool(image), bool(proprio)
    render_mode = kwargs.pop("render_mode", None)
    if render_mode not in (None, "rgb_array"):
        raise ConfigError(
            f"render_mode: expected None or 'rgb_array' (frames for videos come from "
            f"env.render()), got {render_mode!r}"
        )
    if id.startswith("dmc:"):
        from worldflux.envs.dmc import DMCEnv

        domain, sep, task = id[4:].partition("-")
        if not sep or not domain or not task:
            raise ConfigError(
                f"id: expected 'dmc:<domain>-<task>', e.g. dmc:walker-walk, got {id!r}"
            )
        # dm_control always renders offscreen (DMCEnv.render): render_mode needs nothing here.
        check_options(DMCEnv, kwargs, "env.", skip=_OWN | {"domain", "task"})
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
        # ALE keeps the screen (AtariEnv.render): render_mode needs nothing here.
        check_options(AtariEnv, kwargs, "env.", skip=_OWN | {"game"})
        skip = kwargs.pop("frame_skip", 4 if action_repeat == 1 else action_repeat)
        return AtariEnv(id[6:], size=hw, frame_skip=skip, seed=seed, **kwargs)
    if id.startswith("crafter:"):
        from worldflux.envs.crafter import make_crafter

        return make_crafter(id, image_size=hw, action_repeat=action_repeat, seed=seed, **kwargs)
    if image:
        render_mode = "rgb_array"  # image observations are the env's rendered frames
    _check_gym_kwargs(id, kwargs)
    if render_mode is not None:  # only when asked: some constructors take no render_mode
        kwargs["render_mode"] = render_mode
    try:
        env = gymnasium.make(id, **kwargs)
    except gymnasium.error.Error as e:
        raise ConfigError(f"id: gymnasium cannot make {id!r}: {e}{_module_hint(id)}") from e
    except WorldFluxError:
        raise
    except ImportError as e:  # "module:Env-v0" ids import the module first
        cause = e.__cause__ or e  # gymnasium re-raises the import error with a long note
        raise ConfigError(
            f"env: {id!r} needs a module that cannot be imported ({cause}); install it or "
            "check the id ('module:EnvName-vN' imports module first)"
        ) from e
    except (TypeError, ValueError) as e:  # the env's constructor rejected an option
        options = ", ".join(f"env.{k}={v!r}" for k, v in kwargs.items()) or "no env.* options"
        raise ConfigError(f"env: {id!r} rejected its options ({options}): {e}") from e
    return GymEnv(
        env, image=image, proprio=proprio, size=hw, action_repeat=action_repeat, seed=seed
    )


_OWN = {"seed", "image", "action_repeat", "size", "proprio"}  # make_env's own parameters
# Ids registered by a package when it is imported: "module:Id" imports it first.
_MODULES = {
    "MiniGrid-": "minigrid", "BabyAI-": "minigrid", "highway-": "highway_env",
    "merge-": "highway_env", "roundabout-": "highway_env", "parking-": "highway_env",
    "intersection-": "highway_env", "racetrack-": "highway_env", "ALE/": "ale_py",
}  # fmt: skip


def _module_hint(id: str) -> str:  # noqa: A002
    """A hint naming the module prefix that registers `id`, when we know it."""
    for prefix, module in _MODULES.items():
        if id.startswith(prefix):
            return f"; {prefix}* ids are registered by the {module} package: use '{module}:{id}'"
    return ""


# gymnasium.make's own keyword options (the rest go to the env's constructor)
_GYM_MAKE = {
    "max_episode_steps": int | None,
    "disable_env_checker": bool | None,
    "autoreset": bool,
    "apply_api_compatibility": bool | None,
}


def _check_common(
    seed: Any, image: Any, action_repeat: Any, size: Any, proprio: Any
) -> tuple[int, int]:
    """Validate make_env's own options; returns the image size as (H, W)."""
    if seed is not None and not matches(seed, int):
        raise ConfigError(f"seed: expected an int or None, got {seed!r}")
    for name, value in (("image", image), ("proprio", proprio)):
        if not matches(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if not matches(action_repeat, int) or action_repeat < 1:
        raise ConfigError(f"action_repeat: expected an int >= 1, got {action_repeat!r}")
    if matches(size, int):
        hw = (size, size)
    elif matches(size, tuple[int, int]):
        hw = (int(size[0]), int(size[1]))
    else:
        raise ConfigError(f"size: expected an int or [height, width], got {size!r}")
    if min(hw) < 1:
        raise ConfigError(f"size: expected positive sides, got {size!r}")
    return hw


def _check_gym_kwargs(id: str, kwargs: dict[str, Any]) -> None:  # noqa: A002
    """Unknown keys and wrong types for a registered Gymnasium id, before gymnasium.make."""
    try:
        spec = gymnasium.spec(id)
    except gymnasium.error.Error:  # e.g. "module:Env-v0" ids: gymnasium.make will say more
        return
    creator: Any = spec.entry_point
    if isinstance(creator, str):
        try:
            creator = load_env_creator(creator)
        except Exception:  # noqa: BLE001 - the import error shows up again in gymnasium.make
            return
    if callable(creator):
        check_options(creator, kwargs, "env.", skip=_OWN, extra=_GYM_MAKE)


def make_env_fn(id: str, **kwargs: Any) -> functools.partial[Env]:  # noqa: A002
    """The env factory trainers, evaluators and collectors take: copy index -> ``make_env(id,
    **kwargs)`` (every copy the same env; whoever steps it seeds it). A ``functools.partial``
    of module-level functions, so it pickles for ``spawn``ed processes. Your own factory may use
    the index (copy i, e.g. a per-copy setting)."""
    return functools.partial(_copy, id, kwargs)


def _copy(id: str, kwargs: dict[str, Any], index: int) -> Env:  # noqa: A002
    del index
    return make_env(id, **kwargs)


def make_vector_env(id: str, num_envs: int, *, seed: int | None = None, **kwargs: Any) -> VectorEnv:  # noqa: A002
    """`num_envs` copies of ``make_env(id, **kwargs)``; copy i is seeded ``seed + i`` on reset."""
    if num_envs < 1:
        raise ConfigError(f"num_envs: expected an integer >= 1, got {num_envs}")
    envs = [
        make_env(id, seed=None if seed is None else seed + i, **kwargs) for i in range(num_envs)
    ]
    return VectorEnv(envs)

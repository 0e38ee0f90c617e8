"""`GymEnv`: any Gymnasium env behind the `Env` contract (vector, image and Dict observations)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.envs.base import (
    ActionConverter,
    Env,
    ObsArray,
    Step,
    image_space,
    resize_image,
    vector_space,
)

Converter = Callable[[Any], np.ndarray]


def _field_converter(space: spaces.Space, size: tuple[int, int], arg: str) -> tuple[Any, Converter]:
    """(output space, function) turning one inner observation field into model format.

    Box: a float vector, or an image when uint8 with 2-3 dims; Discrete: one-hot; MultiDiscrete:
    the one-hots of its entries, concatenated; MultiBinary: a 0/1 float vector.
    """
    if isinstance(space, spaces.Discrete):
        n, start = int(space.n), int(space.start)
        eye = np.eye(n, dtype=np.float32)
        return vector_space(n), lambda x: eye[int(x) - start].copy()
    if isinstance(space, spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec, np.int64).reshape(-1)
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        starts = np.asarray(space.start, np.int64).reshape(-1)
        total = int(nvec.sum())

        def multi_hot(x: Any) -> np.ndarray:
            out = np.zeros(total, np.float32)
            out[offsets + np.asarray(x, np.int64).reshape(-1) - starts] = 1.0
            return out

        return vector_space(total), multi_hot
    if isinstance(space, spaces.MultiBinary):
        dim = int(np.prod(space.shape))
        return vector_space(dim), lambda x: np.asarray(x, np.float32).reshape(dim)
    if not isinstance(space, spaces.Box):
        raise SpecError(
            f"{arg}: expected Box, Discrete, MultiDiscrete, MultiBinary or a Dict of those, "
            f"got {space!r}"
        )
    shape = tuple(space.shape)
    if space.dtype == np.uint8 and len(shape) in (2, 3):
        chw = len(shape) == 3 and shape[0] in (1, 3) and shape[-1] not in (1, 3)
        channels = 1 if len(shape) == 2 else (shape[0] if chw else shape[-1])
        if channels not in (1, 3):
            raise SpecError(f"{arg}: images need 1 or 3 channels, got shape {shape}")

        def image(x: Any) -> np.ndarray:
            frame = np.asarray(x, np.uint8)
            if frame.ndim == 2:
                frame = frame[:, :, None]  # (H, W) -> (H, W, 1)
            elif chw:
                frame = frame.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
            return resize_image(frame, size)

        return image_space(size, channels), image
    dim = int(np.prod(shape)) if shape else 1
    return vector_space(dim), lambda x: np.asarray(x, np.float32).reshape(dim)


_NUMERIC = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def _numeric_fields(space: spaces.Dict) -> dict[str, spaces.Space]:
    """The fields a model can read; text-like fields (MiniGrid's ``mission`` string, any
    `spaces.Text`) are dropped with one warning naming them. Other kinds are kept, so that
    `_field_converter` names them in its error."""
    dropped = [k for k, v in space.spaces.items() if _is_text(v)]
    if dropped:
        warnings.warn(
            f"observation fields {dropped} hold text, which no model here reads: they are "
            "dropped (encode them in a wrapper of your own to use them)",
            stacklevel=4,
        )
    return {k: v for k, v in space.spaces.items() if k not in dropped}


def _is_text(space: spaces.Space) -> bool:
    # MiniGrid's MissionSpace is no spaces.Text: it samples strings, like Text does
    return isinstance(space, spaces.Text) or (
        not isinstance(space, (*_NUMERIC, spaces.Dict, spaces.Tuple))
        and type(space).__name__.lower().endswith(("textspace", "missionspace"))
    )


class GymEnv(Env):
    """Wraps a Gymnasium env: model-format observations and actions, action repeat, seeding.

    Args:
        env: a Gymnasium env instance (created with ``render_mode="rgb_array"`` when `image`).
        image: observe rendered RGB frames instead of the env's observation.
        proprio: with `image`, observe ``{"image": frame, "state": the env's obs as a vector}``.
        size: (H, W) of image observations; images are resized with antialiased bilinear.
        action_repeat: apply each action this many times, summing rewards, stopping at episode end.
        seed: seed of the first `reset` (later resets continue the env's own RNG stream).
    """

    def __init__(
        self,
        env: gymnasium.Env,
        *,
        image: bool = False,
        proprio: bool = False,
        size: tuple[int, int] = (64, 64),
        action_repeat: int = 1,
        seed: int | None = None,
    ) -> None:
        if action_repeat < 1:
            raise ConfigError(f"action_repeat: expected an integer >= 1, got {action_repeat}")
        if len(size) != 2 or min(size) < 1:
            raise ConfigError(f"size: expected (H, W) with positive entries, got {size}")
        if proprio and not image:
            raise ConfigError("proprio: only meaningful with image=True (got image=False)")
        if image and getattr(env, "render_mode", None) != "rgb_array":
            raise ConfigError(
                f"image=True needs an env made with render_mode='rgb_array', "
                f"got render_mode={getattr(env, 'render_mode', None)!r}"
            )
        self.env, self.image, self.proprio = env, image, proprio
        self.size, self.action_repeat = (int(size[0]), int(size[1])), int(action_repeat)
        self._seed = seed
        self._actions = ActionConverter(env.action_space)
        self.action_space = self._actions.space
        self.observation_space, self._convert = self._build_obs(env.observation_space)
        self._done = True

    def _build_obs(self, inner: spaces.Space) -> tuple[spaces.Space, Callable[[Any], ObsArray]]:
        if self.image:
            img_space, to_img = image_space(self.size), self._frame
            if not self.proprio:
                return img_space, lambda _: to_img()
            st_space, to_state = self._state_converter(inner)
            return spaces.Dict({"image": img_space, "state": st_space}), lambda x: {
                "image": to_img(),
                "state": to_state(x),
            }
        if isinstance(inner, spaces.Dict):
            kept = _numeric_fields(inner)
            parts = {
                k: _field_converter(v, self.size, f"observation_space[{k!r}]")
                for k, v in kept.items()
            }
            space = spaces.Dict({k: p[0] for k, p in parts.items()})
            return space, lambda x: {k: p[1](x[k]) for k, p in parts.items()}
        return _field_converter(inner, self.size, "observation_space")

    def _state_converter(self, inner: spaces.Space) -> tuple[spaces.Space, Converter]:
        if isinstance(inner, spaces.Box) and inner.dtype != np.uint8:
            dim = int(np.prod(inner.shape))
            return vector_space(dim), lambda x: np.asarray(x, np.float32).reshape(dim)
        raise SpecError(f"proprio: the env's observation must be a float Box, got {inner!r}")

    def _frame(self) -> np.ndarray:
        frame = self.env.render()
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            raise SpecError(f"env.render(): expected an (H, W, 3) array, got {type(frame)}")
        return resize_image(np.asarray(frame, np.uint8)[..., :3], self.size)

    def reset(self, seed: int | None = None) -> Step:
        """Start an episode; the reset row has zero action and reward and ``is_first``."""
        pending, self._seed = self._seed, None  # the constructor seed applies to one reset only
        seed = pending if seed is None else seed
        if seed is not None:
            self.action_space.seed(seed)
        obs, info = self.env.reset(seed=seed)
        self._done = False
        return Step(self._convert(obs), self._actions.zeros(), 0.0, True, False, False, info)

    def step(self, action: Any) -> Step:
        """Apply `action` `action_repeat` times (fewer if the episode ends first)."""
        if self._done:
            raise SpecError("step: the episode has ended (or never started); call reset() first")
        env_action, model_action = self._actions(action)
        total, terminated, truncated = 0.0, False, False
        info: dict[str, Any] = {}
        obs: Any = None
        for _ in range(self.action_repeat):
            obs, reward, terminated, truncated, info = self.env.step(env_action)
            total += float(reward)
            if terminated or truncated:
                break
        self._done = bool(terminated or truncated)
        return Step(
            self._convert(obs), model_action, total, False, bool(terminated), self._done, info
        )

    def render(self) -> np.ndarray:
        """The env's own RGB frame (native resolution); needs ``render_mode='rgb_array'``."""
        frame = self.env.render()
        if not isinstance(frame, np.ndarray):
            raise SpecError("render: the env was not made with render_mode='rgb_array'")
        return np.asarray(frame, np.uint8)[..., :3]

    def close(self) -> None:
        self.env.close()

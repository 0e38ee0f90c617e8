"""The environment contract: `Env`, the step records `Step`/`StepBatch`, and shared converters.

Every adapter speaks the row convention of `worldflux.core.batch.Batch`: each call to `reset` or
`step` returns ONE row describing the arrival at an observation:

- ``obs``          the observation o_t (numpy; an array, or a dict of arrays for Dict spaces)
- ``action``       the action a_{t-1} that led to o_t, in MODEL format: float32 ``(A,)``,
                   one-hot for Discrete spaces (concatenated one-hots for MultiDiscrete,
                   +-1 bits for MultiBinary), in [-1, 1] for Box spaces; zeros on reset rows
- ``reward``       the reward received on arriving at o_t (summed over action repeats); 0 on reset
- ``is_first``     True only on the row returned by `reset`
- ``is_terminal``  o_t is a true end of the MDP (gymnasium ``terminated``)
- ``is_last``      the episode ends at o_t: terminated OR truncated (time limit)

A replay (`worldflux.data.Replay`) stores these rows as they come, so a stored episode is exactly
the sequence of rows an agent saw, including its last observation.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

from worldflux.core.exceptions import SpecError

ObsArray = np.ndarray | dict[str, np.ndarray]


@dataclass
class Step:
    """One row of one environment (see the module docstring for the convention)."""

    obs: ObsArray
    action: np.ndarray  # (A,) float32, model format
    reward: float
    is_first: bool
    is_terminal: bool
    is_last: bool
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        """The episode ended at a time limit (or was cut), not at a true terminal state."""
        return self.is_last and not self.is_terminal


@dataclass
class StepBatch:
    """Rows of N environments stacked on a leading axis: obs (N, ...), action (N, A), flags (N,)."""

    obs: ObsArray
    action: np.ndarray  # (N, A) float32
    reward: np.ndarray  # (N,) float32
    is_first: np.ndarray  # (N,) bool
    is_terminal: np.ndarray  # (N,) bool
    is_last: np.ndarray  # (N,) bool
    infos: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    @staticmethod
    def stack(steps: Sequence[Step]) -> StepBatch:
        """Stack single-env rows into a batch (N = len(steps))."""
        if not steps:
            raise SpecError("StepBatch.stack: steps must be a non-empty sequence, got []")
        first = steps[0].obs
        if isinstance(first, Mapping):
            dicts = [cast(dict[str, np.ndarray], s.obs) for s in steps]
            obs: ObsArray = {k: np.stack([d[k] for d in dicts]) for k in first}
        else:
            obs = np.stack([cast(np.ndarray, s.obs) for s in steps])
        return StepBatch(
            obs=obs,
            action=np.stack([s.action for s in steps]).astype(np.float32, copy=False),
            reward=np.asarray([s.reward for s in steps], dtype=np.float32),
            is_first=np.asarray([s.is_first for s in steps], dtype=bool),
            is_terminal=np.asarray([s.is_terminal for s in steps], dtype=bool),
            is_last=np.asarray([s.is_last for s in steps], dtype=bool),
            infos=[s.info for s in steps],
        )

    def row(self, i: int) -> Step:
        """The i-th environment's row as a `Step`."""
        obs = {k: v[i] for k, v in self.obs.items()} if isinstance(self.obs, dict) else self.obs[i]
        info = self.infos[i] if i < len(self.infos) else {}
        return Step(
            obs,
            self.action[i],
            float(self.reward[i]),
            bool(self.is_first[i]),
            bool(self.is_terminal[i]),
            bool(self.is_last[i]),
            info,
        )


class Env(abc.ABC):
    """A single environment producing `Step` rows.

    ``observation_space`` is a Box float32 vector, a Box uint8 HWC image, or a Dict of those;
    ``action_space`` is Discrete, MultiDiscrete, MultiBinary or a 1-D Box in [-1, 1] (see
    `ActionConverter` for each one's model format). Both can be passed straight to
    `worldflux.create_world_model`. After a row with ``is_last`` the caller must `reset`.
    """

    observation_space: spaces.Space
    action_space: spaces.Space

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> Step:
        """Start an episode (re-seeding the env and its action space when `seed` is given)."""

    @abc.abstractmethod
    def step(self, action: Any) -> Step:
        """Apply `action` (index or one-hot for Discrete; [-1, 1] vector for Box)."""

    @property
    def native_action_space(self) -> spaces.Space:
        """The simulator's own action space (Pendulum: Box(-2, 2)), into which `step` converts
        model-format actions with an `ActionConverter` (the adapters keep it as ``_actions``);
        adapters without one act in `action_space` itself."""
        converter = getattr(self, "_actions", None)
        return converter.inner if isinstance(converter, ActionConverter) else self.action_space

    def render(self) -> np.ndarray:
        """An RGB frame (H, W, 3) uint8 of the current state, for videos."""
        raise NotImplementedError(f"{type(self).__name__} cannot render")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release simulator resources."""


def resize_image(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 (H, W, C) frame to (size[0], size[1], C) with antialiased bilinear."""
    if frame.dtype != np.uint8 or frame.ndim != 3:
        raise SpecError(f"frame: expected uint8 (H, W, C), got {frame.dtype} {frame.shape}")
    if frame.shape[:2] == tuple(size):
        return np.ascontiguousarray(frame)
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]  # (1, C, H, W)
    y = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).contiguous().numpy()  # (C, h, w) -> (h, w, C)


def image_space(size: tuple[int, int], channels: int = 3) -> spaces.Box:
    """Box uint8 (H, W, C) space."""
    return spaces.Box(0, 255, (size[0], size[1], channels), np.uint8)


def vector_space(dim: int) -> spaces.Box:
    """Unbounded Box float32 (dim,) space."""
    return spaces.Box(-np.inf, np.inf, (dim,), np.float32)


def _to_numpy(action: Any) -> np.ndarray:
    if hasattr(action, "detach"):  # a torch Tensor, possibly on an accelerator
        action = action.detach().cpu().numpy()
    return np.asarray(action)


class ActionConverter:
    """Maps model-format actions to an inner env's action space and back.

    Discrete(n): accepts an index or an (n,) vector (argmax); the model format is one-hot.
    MultiDiscrete(nvec): accepts the indices (nvec's shape) or the (sum(nvec),) concatenated
    vectors (argmax per group); the model format is the concatenated one-hots.
    MultiBinary(n): accepts a float vector (a bit is set where the value is > 0) or 0/1
    integers; the model format is +1 per set bit, -1 per clear one.
    Box with finite bounds: accepts (A,) floats, clipped to [-1, 1], rescaled linearly to
    [low, high] and reshaped to the inner shape.
    """

    def __init__(self, inner: spaces.Space, arg: str = "action_space") -> None:
        self.inner = inner
        self.discrete = isinstance(inner, spaces.Discrete)
        self.kind = type(inner).__name__
        if isinstance(inner, spaces.Discrete):
            self.dim = int(inner.n)
            self.space: spaces.Space = spaces.Discrete(self.dim)
        elif isinstance(inner, spaces.MultiDiscrete):
            self.nvec = np.asarray(inner.nvec, np.int64).reshape(-1)
            self.starts = np.asarray(inner.start, np.int64).reshape(-1)
            self.offsets = np.concatenate([[0], np.cumsum(self.nvec)[:-1]])
            self.dim = int(self.nvec.sum())
            self.space = spaces.MultiDiscrete(self.nvec)
        elif isinstance(inner, spaces.MultiBinary):
            self.dim = int(np.prod(inner.shape))
            self.space = spaces.MultiBinary(self.dim)
        elif isinstance(inner, spaces.Box):
            low = np.asarray(inner.low, np.float64).reshape(-1)
            high = np.asarray(inner.high, np.float64).reshape(-1)
            if not (np.isfinite(low).all() and np.isfinite(high).all()):
                raise SpecError(
                    f"{arg}: Box actions need finite bounds to normalise to [-1, 1], got "
                    f"low={inner.low}, high={inner.high}"
                )
            self.dim = int(low.size)
            self.low, self.high = low, high
            self.space = spaces.Box(-1.0, 1.0, (self.dim,), np.float32)
        else:
            raise SpecError(
                f"{arg}: expected Discrete, MultiDiscrete, MultiBinary or Box, got {inner!r}"
            )

    def __call__(self, action: Any) -> tuple[Any, np.ndarray]:
        """Return (action for the inner env, the model-format action actually applied)."""
        a = _to_numpy(action)
        if self.kind == "Discrete":
            return self._discrete(a)
        if self.kind == "MultiDiscrete":
            return self._multi_discrete(a)
        if self.kind == "MultiBinary":
            return self._multi_binary(a)
        if a.shape != (self.dim,) or a.dtype.kind not in "fiu":
            raise SpecError(
                f"action: expected a ({self.dim},) float vector in [-1, 1], "
                f"got dtype {a.dtype} shape {a.shape}"
            )
        if not np.isfinite(a).all():
            raise SpecError(f"action: expected finite values, got {a}")
        a = np.clip(a.astype(np.float32), -1.0, 1.0)
        scaled = self.low + (a.astype(np.float64) + 1.0) * 0.5 * (self.high - self.low)
        inner_dtype = getattr(self.inner, "dtype", np.float32)
        return scaled.reshape(self.inner.shape).astype(inner_dtype), a

    def _discrete(self, a: np.ndarray) -> tuple[int, np.ndarray]:
        if a.ndim == 1 and a.shape[0] == self.dim and a.dtype.kind == "f":
            index = int(np.argmax(a))
        elif a.size == 1 and (a.dtype.kind in "iu" or float(a.item()).is_integer()):
            index = int(a.item())
        else:
            raise SpecError(
                f"action: expected an integer index or a ({self.dim},) one-hot vector, "
                f"got dtype {a.dtype} shape {a.shape}"
            )
        if not 0 <= index < self.dim:
            raise SpecError(f"action: index must lie in [0, {self.dim}), got {index}")
        onehot = np.zeros(self.dim, np.float32)
        onehot[index] = 1.0
        start = int(getattr(self.inner, "start", 0))
        return index + start, onehot

    def _multi_discrete(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        groups = len(self.nvec)
        if a.shape == (self.dim,) and a.dtype.kind == "f":
            index = np.array([np.argmax(g) for g in np.split(a, self.offsets[1:])], np.int64)
        elif a.size == groups and a.dtype.kind in "iu":
            index = a.reshape(-1).astype(np.int64)
        else:
            raise SpecError(
                f"action: expected {groups} integer indices or a ({self.dim},) vector of "
                f"concatenated one-hots (sizes {self.nvec.tolist()}), got dtype {a.dtype} "
                f"shape {a.shape}"
            )
        if (index < 0).any() or (index >= self.nvec).any():
            raise SpecError(f"action: indices must lie in [0, {self.nvec.tolist()}), got {index}")
        onehots = np.zeros(self.dim, np.float32)
        onehots[self.offsets + index] = 1.0
        env_action = (index + self.starts).reshape(self.inner.shape).astype(self.inner.dtype)
        return env_action, onehots

    def _multi_binary(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if a.size != self.dim or a.dtype.kind not in "fiub":
            raise SpecError(
                f"action: expected {self.dim} bits (floats, set where > 0, or 0/1 integers), "
                f"got dtype {a.dtype} shape {a.shape}"
            )
        if a.dtype.kind in "iub" and not np.isin(a, (0, 1)).all():
            raise SpecError(f"action: integer bits must be 0 or 1, got {a}")
        bits = a.reshape(-1) > (0.5 if a.dtype.kind in "iub" else 0.0)
        env_action = bits.reshape(self.inner.shape).astype(self.inner.dtype)
        return env_action, np.where(bits, 1.0, -1.0).astype(np.float32)

    def normalise(self, env_action: Any) -> np.ndarray:
        """Inverse map: an inner-env action to model format (for logging demonstrations)."""
        if self.kind in ("Discrete", "MultiDiscrete"):
            return self(np.asarray(env_action, np.int64) - self._start())[1]
        if self.kind == "MultiBinary":
            return self(np.asarray(env_action, np.int64))[1]
        x = np.asarray(env_action, np.float64).reshape(-1)
        return (2.0 * (x - self.low) / (self.high - self.low) - 1.0).astype(np.float32)

    def _start(self) -> Any:
        if self.kind == "Discrete":
            return int(getattr(self.inner, "start", 0))
        return self.starts.reshape(np.shape(self.inner.nvec))  # type: ignore[attr-defined]

    def zeros(self) -> np.ndarray:
        """The model-format action stored on reset rows."""
        return np.zeros(self.dim, np.float32)

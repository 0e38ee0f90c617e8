"""`Replay`: a sequence replay buffer for many env streams, in memory or on disk (numpy memmap).

Rows are stored exactly as environments emit them (`worldflux.envs.Step` / `StepBatch`, the row
convention of `worldflux.core.batch.Batch`), one FIFO ring per env stream: the capacity is split
evenly over `num_envs` streams, and a full stream overwrites its oldest row.

Observations keep the env's form across the buffer: `add` takes it (an array, or a dict of
arrays for a Dict space) and `sample` returns it (a (B, T, ...) Tensor, or a dict of them).
Inside, each field is one storage array ``obs.<field>`` (``obs.obs`` for a Box space; the name
the ``.npy`` files on disk have always had).

Sampling picks sequence windows uniformly over all valid (stream, start) pairs:

- a window never crosses from one env's stream into another's;
- by default (Dreamer) a window may span episode boundaries, which ``is_first`` marks (the model
  resets its state there); ``within_episode=True`` (TD-MPC2's short sub-sequences) samples only
  windows that lie inside one episode.

Images are stored once as uint8 and returned as uint8 tensors; vectors as float32. Sampling uses
the buffer's own numpy Generator, so the same seed and the same adds give the same batches;
`get_state`/`set_state` expose that RNG as JSON data. `save`/`load` use ``.npy`` files and JSON
(never pickle); see `worldflux.data.replay_io`.

``track_versions=True`` adds an int64 ``policy_version`` column: ``add(rows, env_ids,
policy_version=...)`` records which policy version acted each row (collector runs fill it from
their chunks; rows added without one get -1), and `policy_versions(idx)` reads it for sampled
indices. Without it the buffer stores nothing extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldflux.core.batch import Batch
from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.core.spec import ActionSpec, ObsSpec
from worldflux.envs.base import Step, StepBatch

FLAGS = ("is_first", "is_terminal", "is_last")
VERSION = "policy_version"  # optional storage array (``track_versions=True``)
NO_VERSION = -1  # the version of rows added without one (and of every row when untracked)
REJECTION_ROUNDS = 8  # then fall back to listing the valid windows exactly


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype(np.uint8) if dtype == torch.uint8 else np.dtype(np.float32)


class Replay:
    """Replay buffer of `capacity` rows over `num_envs` streams (see the module docstring).

    Args:
        capacity: total rows kept (each stream keeps ``capacity // num_envs``).
        observation_space, action_space: gymnasium spaces (or `ObsSpec`/`ActionSpec`).
        num_envs: number of env streams that `add` writes to (ids 0..num_envs-1).
        seed: seed of the sampling RNG.
        directory: if given, arrays live in ``.npy`` memmaps there (disk-backed mode).
        track_versions: also store a per-row int64 ``policy_version`` (see the module docstring).
    """

    def __init__(
        self,
        capacity: int,
        observation_space: Any,
        action_space: Any,
        *,
        num_envs: int = 1,
        seed: int | None = 0,
        directory: str | Path | None = None,
        track_versions: bool = False,
    ) -> None:
        if num_envs < 1:
            raise ConfigError(f"num_envs: expected an integer >= 1, got {num_envs}")
        if capacity < num_envs:
            raise ConfigError(f"capacity: expected >= num_envs ({num_envs}), got {capacity}")
        self.obs_spec = ObsSpec.from_space(observation_space)
        self.action_spec = ActionSpec.from_space(action_space)
        self.num_envs, self.stream_capacity = int(num_envs), int(capacity) // int(num_envs)
        self.directory = None if directory is None else Path(directory)
        self.track_versions = bool(track_versions)
        self.rng = np.random.default_rng(seed)
        self.arrays: dict[str, np.ndarray] = {}
        for name, (shape, dtype) in self.layout().items():
            self.arrays[name] = self._allocate(name, shape, dtype)
        if self.track_versions:
            self.arrays[VERSION][:] = NO_VERSION
        self.written = np.zeros(num_envs, np.int64)  # rows ever added per stream
        self.episode = np.zeros(num_envs, np.int64)  # episodes started per stream
        self.expect_first = np.ones(num_envs, bool)  # next row must be is_first

    @property
    def capacity(self) -> int:
        return self.num_envs * self.stream_capacity

    def layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Storage array name -> (per-row shape, dtype)."""
        out = {f"obs.{k}": (f.shape, _np_dtype(f.dtype)) for k, f in self.obs_spec.fields.items()}
        out["action"] = ((self.action_spec.dim,), np.dtype(np.float32))
        out["reward"] = ((), np.dtype(np.float32))
        out.update({name: ((), np.dtype(bool)) for name in FLAGS})
        out["episode"] = ((), np.dtype(np.int64))
        if self.track_versions:
            out[VERSION] = ((), np.dtype(np.int64))
        return out

    def _allocate(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        full = (self.capacity, *shape)
        if self.directory is None:
            return np.zeros(full, dtype)
        self.directory.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(self.directory / f"{name}.npy", "w+", dtype, full)

    @property
    def counts(self) -> np.ndarray:
        """Rows currently stored per stream, (num_envs,)."""
        return np.minimum(self.written, self.stream_capacity)

    def __len__(self) -> int:
        return int(self.counts.sum())

    def __repr__(self) -> str:
        where = "memory" if self.directory is None else f"memmap at {self.directory}"
        return (
            f"Replay({len(self)}/{self.capacity} rows, {self.num_envs} streams, "
            f"{int(self.episode.sum())} episodes started, {where})"
        )

    # ---------------------------------------------------------------- adding

    def add(self, rows: Step | StepBatch, env_ids: Any = None, policy_version: Any = None) -> None:
        """Append one row per env: `rows` (N rows) goes to streams `env_ids` (default 0..N-1).

        `policy_version` (an int or N ints) is the policy version that acted each row; it needs
        ``track_versions=True`` (rows added without it get -1).
        """
        batch = StepBatch.stack([rows]) if isinstance(rows, Step) else rows
        n = len(batch)
        ids = np.arange(n) if env_ids is None else np.asarray(env_ids, np.int64).reshape(-1)
        if ids.shape != (n,):
            raise SpecError(f"env_ids: expected {n} ids (one per row), got shape {ids.shape}")
        if n and (ids.min() < 0 or ids.max() >= self.num_envs):
            raise SpecError(f"env_ids: expected ids in [0, {self.num_envs}), got {ids.tolist()}")
        if len(np.unique(ids)) != n:
            raise SpecError(f"env_ids: each stream may get one row per call, got {ids.tolist()}")
        values = self._check_rows(batch, ids)
        if policy_version is not None and not self.track_versions:
            raise ConfigError(
                "policy_version: this replay stores no versions; create it with track_versions=True"
            )
        if self.track_versions:
            v = np.asarray(NO_VERSION if policy_version is None else policy_version, np.int64)
            if v.size not in (1, n):
                raise SpecError(
                    f"policy_version: expected an int or {n} ints (one per row), got shape "
                    f"{v.shape}"
                )
            values[VERSION] = np.broadcast_to(v.reshape(-1), (n,))
        self.episode[ids] += values["is_first"]
        values["episode"] = self.episode[ids]
        flat = ids * self.stream_capacity + self.written[ids] % self.stream_capacity
        for name, v in values.items():
            self.arrays[name][flat] = v
        self.written[ids] += 1
        self.expect_first[ids] = values["is_last"]

    def _check_rows(self, batch: StepBatch, ids: np.ndarray) -> dict[str, np.ndarray]:
        n = len(batch)
        obs = self.obs_spec.fields_of(batch.obs, "rows.obs")
        if isinstance(batch.obs, dict) and len(batch.obs) != len(obs):  # keys nobody stores
            raise SpecError(f"rows.obs: expected keys {sorted(obs)}, got {sorted(batch.obs)}")
        values: dict[str, np.ndarray] = {}
        for key, f in self.obs_spec.fields.items():
            arr = np.asarray(obs[key])
            name = f"rows.obs[{key!r}]" if self.obs_spec.is_dict else "rows.obs"
            if arr.shape != (n, *f.shape):
                raise SpecError(f"{name}: expected {(n, *f.shape)}, got {arr.shape}")
            if f.is_image and arr.dtype != np.uint8:
                raise SpecError(f"{name}: images must be uint8, got {arr.dtype}")
            values[f"obs.{key}"] = arr
        action = np.asarray(batch.action, np.float32)
        if action.shape != (n, self.action_spec.dim):
            raise SpecError(
                f"rows.action: expected {(n, self.action_spec.dim)}, got {action.shape}"
            )
        values["action"] = action
        values["reward"] = np.asarray(batch.reward, np.float32).reshape(n)
        for name in FLAGS:
            values[name] = np.asarray(getattr(batch, name), bool).reshape(n)
        if (values["is_terminal"] & ~values["is_last"]).any():
            raise SpecError("rows.is_terminal: a terminal row must also be is_last")
        missing = self.expect_first[ids] & ~values["is_first"]
        if missing.any():
            raise SpecError(
                f"rows.is_first: streams {ids[missing].tolist()} start (or follow an is_last "
                f"row) and need an is_first row (a reset), got is_first=False"
            )
        return values

    # -------------------------------------------------------------- sampling

    def sample_indices(
        self, batch_size: int, length: int, within_episode: bool = False
    ) -> np.ndarray:
        """Flat storage indices (batch_size, length) of uniformly drawn valid windows."""
        if batch_size < 1 or length < 1:
            raise ConfigError(
                f"batch_size, length: expected integers >= 1, got {batch_size}, {length}"
            )
        if length > self.stream_capacity:
            raise ConfigError(
                f"length: expected <= the per-stream capacity {self.stream_capacity}, got {length}"
            )
        starts = np.maximum(self.counts - length + 1, 0)  # valid window starts per stream
        total = int(starts.sum())
        if total == 0:
            raise SpecError(
                f"sample: no stream holds {length} rows yet (rows per stream: "
                f"{self.counts.tolist()}); add more before sampling"
            )
        idx = self._draw(batch_size, length, starts, total)
        if within_episode:
            idx = self._within_episode(idx, length, starts, total)
        return idx

    def _draw(self, n: int, length: int, starts: np.ndarray, total: int) -> np.ndarray:
        u = self.rng.integers(0, total, size=n)
        bounds = np.cumsum(starts)
        env = np.searchsorted(bounds, u, side="right")  # (n,)
        offset = u - (bounds[env] - starts[env])  # chronological start within the stream
        oldest = np.where(self.written > self.stream_capacity, self.written, 0)[env]
        chrono = offset[:, None] + np.arange(length)[None, :]  # (n, length)
        phys = (oldest[:, None] + chrono) % self.stream_capacity
        return env[:, None] * self.stream_capacity + phys

    def _within_episode(
        self, idx: np.ndarray, length: int, starts: np.ndarray, total: int
    ) -> np.ndarray:
        # Rejection sampling keeps the draw uniform over the windows inside one episode (episode
        # ids rise monotonically along a stream, so equal ends mean one episode). When windows
        # rarely fit, the rest are drawn from the exact list of valid windows: still uniform.
        ep = self.arrays["episode"]
        bad = ep[idx[:, 0]] != ep[idx[:, -1]]
        for _ in range(REJECTION_ROUNDS):
            if not bad.any():
                return idx
            idx[bad] = self._draw(int(bad.sum()), length, starts, total)
            bad = ep[idx[:, 0]] != ep[idx[:, -1]]
        if bad.any():
            valid = self._episode_windows(length)  # (V, length)
            if len(valid) == 0:
                raise SpecError(
                    f"sample(within_episode=True): no stored episode has {length} rows yet "
                    f"(rows per stream: {self.counts.tolist()}); add more or use shorter windows"
                )
            idx[bad] = valid[self.rng.integers(0, len(valid), size=int(bad.sum()))]
        return idx

    def _episode_windows(self, length: int) -> np.ndarray:
        """Flat indices (V, length) of every stored window that lies inside one episode."""
        out = []
        for env in range(self.num_envs):
            count = int(self.counts[env])
            if count < length:
                continue
            oldest = (
                int(self.written[env]) % self.stream_capacity
                if count == self.stream_capacity
                else 0
            )
            chrono = (oldest + np.arange(count)) % self.stream_capacity  # physical, oldest first
            ep = self.arrays["episode"][env * self.stream_capacity + chrono]
            ok = np.flatnonzero(ep[: count - length + 1] == ep[length - 1 :])  # window starts
            windows = ok[:, None] + np.arange(length)[None, :]  # (V_env, length) chronological
            out.append(env * self.stream_capacity + chrono[windows])
        return np.concatenate(out) if out else np.zeros((0, length), np.int64)

    def sample(
        self,
        batch_size: int,
        length: int,
        *,
        within_episode: bool = False,
        device: torch.device | str | None = None,
    ) -> Batch:
        """A `Batch` of `batch_size` windows of `length` rows (see the module docstring)."""
        idx = self.sample_indices(batch_size, length, within_episode)
        return self.gather(idx, device)

    def gather(self, idx: np.ndarray, device: torch.device | str | None = None) -> Batch:
        """The `Batch` at flat storage indices `idx` (B, T); pinned before a copy to CUDA."""
        flat = idx.reshape(-1)  # (B, T) -> (B*T,)
        pin = device is not None and torch.device(device).type == "cuda"

        def take(name: str) -> torch.Tensor:
            arr = self.arrays[name]
            out = np.take(arr, flat, axis=0).reshape(*idx.shape, *arr.shape[1:])  # (B, T, ...)
            t = torch.from_numpy(out)
            return t.pin_memory() if pin else t  # pinned: the copy to the GPU runs async

        batch = Batch(
            obs=self.obs_spec.from_fields({k: take(f"obs.{k}") for k in self.obs_spec.fields}),
            action=take("action"),
            reward=take("reward"),
            is_first=take("is_first"),
            is_terminal=take("is_terminal"),
            is_last=take("is_last"),
            checked=True,  # `add` checked every row's flags (and `load` a saved buffer's)
        )
        return batch if device is None else batch.to(device)

    def policy_versions(self, idx: np.ndarray) -> np.ndarray:
        """int64 policy version of the rows at flat storage indices `idx` (e.g. (B, T) from
        `sample_indices`); -1 where unknown, and everywhere when ``track_versions`` is off."""
        idx = np.asarray(idx, np.int64)
        if not self.track_versions:
            return np.full(idx.shape, NO_VERSION, np.int64)
        return np.take(self.arrays[VERSION], idx.reshape(-1)).reshape(idx.shape)

    # ------------------------------------------------------ state, save, load

    def get_state(self) -> dict[str, Any]:
        """The sampling RNG's state as JSON-able data."""
        return {"bit_generator": dict(self.rng.bit_generator.state)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore the sampling RNG from `get_state()` data."""
        try:
            self.rng.bit_generator.state = state["bit_generator"]
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError(
                f"state: expected the dict from Replay.get_state(), got {state!r}"
            ) from e

    def save(self, path: str | Path) -> None:
        """Write the buffer to folder `path` (``.npy`` + ``replay.json``); see `replay_io`."""
        from worldflux.data.replay_io import save_replay

        save_replay(self, Path(path))

    @classmethod
    def load(cls, path: str | Path, *, directory: str | Path | None = None) -> Replay:
        """Read a buffer written by `save`; `directory` makes it disk-backed there."""
        from worldflux.data.replay_io import load_replay

        return load_replay(Path(path), directory=None if directory is None else Path(directory))

    def flush(self) -> None:
        """Write disk-backed arrays through to their files."""
        for arr in self.arrays.values():
            if isinstance(arr, np.memmap):
                arr.flush()

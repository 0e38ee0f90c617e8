"""Offline datasets on disk: record noisy-expert episodes once, train from them reproducibly.

Layout of a dataset folder (plain ``.npy`` arrays, read back memory-mapped with
``allow_pickle=False``, plus JSON metadata; nothing is ever unpickled):

============  ==================================================================================
file          content (N = total steps over all episodes, rows follow the `Batch` convention)
============  ==================================================================================
frames.npy    (N, H, W, 3) uint8 observations o_t
actions.npy   (N, A) float32, the action that LED to o_t (zeros on an episode's first row)
rewards.npy   (N,) float32, reward received on arriving at o_t
flags.npy     (N, 3) bool: is_first, is_terminal, is_last
positions.npy (N, 2) float32 agent position (ground truth for probes; not given to models)
meta.json     format, env kwargs, seed, noise, episode count and length
============  ==================================================================================
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldflux.core.batch import Batch
from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.envs.tworoom import TwoRoomEnv, expert_action

FORMAT = "worldflux.offline/1"
_ARRAYS = ("frames", "actions", "rewards", "flags", "positions")


@dataclass(frozen=True)
class RecordConfig:
    """How to record a two-room dataset."""

    episodes: int = 200  # number of episodes
    episode_length: int = 64  # steps per episode (frames = episode_length + 1)
    noise: float = 0.5  # std of Gaussian noise added to the expert action
    random_prob: float = 0.2  # chance per step of a uniformly random action instead
    straight_prob: float = 0.5  # chance per goal of heading straight at it, sliding along walls
    seed: int = 0  # seeds starts, goals and noise

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"episodes: expected >= 1, got {self.episodes}")
        if self.episode_length < 1:
            raise ConfigError(f"episode_length: expected >= 1, got {self.episode_length}")
        if self.noise < 0:
            raise ConfigError(f"noise: expected >= 0, got {self.noise}")
        for name in ("random_prob", "straight_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: expected in [0, 1], got {getattr(self, name)}")


def record_tworoom(
    path: str | Path, config: RecordConfig, env_kwargs: dict[str, Any] | None = None
) -> Path:
    """Record noisy-expert episodes of `TwoRoomEnv` into the folder `path`; returns it.

    Starts and goals are uniform over both rooms; a new goal is drawn whenever one is reached, so
    episodes keep moving and cross the door often. With `straight_prob` the policy heads straight
    at a goal, ignoring the door, so the data also shows the agent pressing against and sliding
    along the wall (a planner must know the wall blocks). Existing dataset files are overwritten.
    """
    env_kwargs = dict(env_kwargs or {})
    env = TwoRoomEnv(**{**env_kwargs, "start_room": "any", "goal_room": "any"})
    rng = np.random.default_rng(config.seed)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    steps = config.episode_length + 1
    n = config.episodes * steps
    frames = np.lib.format.open_memmap(
        out / "frames.npy", mode="w+", dtype=np.uint8, shape=(n, env.size, env.size, 3)
    )
    actions = np.zeros((n, 2), np.float32)
    rewards = np.zeros(n, np.float32)
    flags = np.zeros((n, 3), bool)
    positions = np.zeros((n, 2), np.float32)
    for ep in range(config.episodes):
        env.reset(seed=int(rng.integers(2**31)))
        base = ep * steps
        frames[base], positions[base] = env.render(), env.pos
        flags[base, 0] = True
        straight = bool(rng.random() < config.straight_prob)
        for t in range(1, steps):
            straight = straight and rng.random() >= 0.05  # stuck phases last ~20 steps
            a = _noisy_expert(env, rng, config, straight)
            env.pos = env.move(env.pos, a)
            i = base + t
            frames[i], actions[i], positions[i] = env.render(), a, env.pos
            if np.linalg.norm(env.pos - env.goal) <= env.success_radius:
                rewards[i] = 1.0
                env.goal = env.sample_free(rng, "any")
                straight = bool(rng.random() < config.straight_prob)
        flags[base + steps - 1, 2] = True
    frames.flush()
    del frames
    for name, arr in (("actions", actions), ("rewards", rewards), ("flags", flags)):
        np.save(out / f"{name}.npy", arr, allow_pickle=False)
    np.save(out / "positions.npy", positions, allow_pickle=False)
    meta = {
        "format": FORMAT,
        "env": "worldflux/TwoRoom-v0",
        "env_kwargs": env_kwargs,
        "record": config.__dict__,
        "num_steps": n,
        "episodes": config.episodes,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out


def _noisy_expert(
    env: TwoRoomEnv, rng: np.random.Generator, config: RecordConfig, straight: bool
) -> np.ndarray:
    if rng.random() < config.random_prob:
        return rng.uniform(-1.0, 1.0, 2).astype(np.float32)
    if straight:  # ignore the door: walk at the goal and slide along the wall
        clean = np.clip((env.goal - env.pos) / env.max_step, -1.0, 1.0)
    else:
        clean = expert_action(env, env.pos, env.goal)
    a = clean + rng.normal(0.0, config.noise, 2)
    return np.clip(a, -1.0, 1.0).astype(np.float32)


class OfflineDataset:
    """Memory-mapped reader of a recorded folder; samples within-episode windows as `Batch`es."""

    def __init__(self, path: str | Path) -> None:
        root = Path(path)
        meta_file = root / "meta.json"
        if not meta_file.is_file():
            raise SpecError(f"path: expected a dataset folder with meta.json, got {str(root)!r}")
        self.meta: dict[str, Any] = json.loads(meta_file.read_text())
        if self.meta.get("format") != FORMAT:
            raise SpecError(f"path: expected format {FORMAT!r}, got {self.meta.get('format')!r}")
        arrays = {k: np.load(root / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in _ARRAYS}
        n = int(self.meta["num_steps"])
        for k, arr in arrays.items():
            if arr.shape[0] != n:
                raise SpecError(f"{k}.npy: expected {n} rows, got {arr.shape[0]}")
        self.frames, self.actions = arrays["frames"], arrays["actions"]
        self.rewards, self.flags, self.positions = (
            arrays["rewards"],
            arrays["flags"],
            arrays["positions"],
        )
        starts = np.flatnonzero(self.flags[:, 0])
        ends = np.append(starts[1:], n)  # exclusive
        self.episode_bounds = np.stack([starts, ends], 1)  # (E, 2)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def sample(self, batch_size: int, seq_len: int, rng: np.random.Generator) -> Batch:
        """`batch_size` windows of `seq_len` consecutive rows, each inside one episode.

        -> Batch with obs (B, T, H, W, 3) uint8 and action (B, T, A) float32. `is_first` is set
        only where a window starts at its episode's first row.
        """
        lengths = self.episode_bounds[:, 1] - self.episode_bounds[:, 0]
        ok = np.flatnonzero(lengths >= seq_len)
        if batch_size < 1 or seq_len < 1 or ok.size == 0:
            raise SpecError(
                f"sample: expected batch_size >= 1 and 1 <= seq_len <= {int(lengths.max())}, "
                f"got batch_size={batch_size}, seq_len={seq_len}"
            )
        eps = rng.choice(ok, size=batch_size)
        offs = rng.integers(0, lengths[eps] - seq_len + 1)
        starts = self.episode_bounds[eps, 0] + offs
        idx = starts[:, None] + np.arange(seq_len)[None, :]  # (B, T) row indices
        flags = torch.from_numpy(np.asarray(self.flags[idx.ravel()]).reshape(*idx.shape, 3))
        return Batch(
            obs=torch.from_numpy(np.asarray(self.frames[idx.ravel()])).reshape(
                *idx.shape, *self.frames.shape[1:]
            ),  # (B*T, H, W, 3) -> (B, T, H, W, 3)
            action=torch.from_numpy(np.asarray(self.actions[idx])),
            reward=torch.from_numpy(np.asarray(self.rewards[idx])),
            is_first=flags[..., 0],
            is_terminal=flags[..., 1],
            is_last=flags[..., 2],
        ).validate()

    def iterate(self, batch_size: int, seq_len: int, seed: int) -> Iterator[Batch]:
        """An endless, seeded stream of `sample` batches."""
        rng = np.random.default_rng(seed)
        while True:
            yield self.sample(batch_size, seq_len, rng)

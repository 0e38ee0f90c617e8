"""Import a Minari dataset (the ``minari`` package; the ``minari`` extra) as offline data.

`import_minari` writes the episodes as a saved `Replay` (``replay.json`` + ``.npy`` arrays, one
stream, episodes in order), the second form that offline training (``dataset=<folder>``) reads,
plus ``minari.json`` naming the source. Each Minari episode of T steps (T+1 observations,
T actions, rewards, terminations, truncations) becomes T+1 rows of the `Batch` convention:

- row 0: o_0, ``is_first``, a zero action and reward 0;
- row t (1..T): o_t, the action a_{t-1} that led to it in model format (one-hot for Discrete,
  rescaled to [-1, 1] for a bounded Box, clipped there), r_{t-1}, ``is_terminal`` =
  terminations[t-1], and ``is_last`` on row T (an episode cut without either flag still ends).

Observations are a Box (a vector, or a uint8 image) or a Dict of those, as for any env.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.data.replay import Replay
from worldflux.envs.base import ActionConverter, StepBatch

INFO_FILE = "minari.json"


def import_minari(dataset: str | Path, out_dir: str | Path, *, download: bool = False) -> Path:
    """Convert the Minari dataset `dataset` (a local dataset id such as
    ``"D4RL/pen/human-v2"``, looked up under ``MINARI_DATASETS_PATH``, or the path of a
    dataset folder) into the new or empty folder `out_dir`; returns it. `download`: fetch a
    remote id first (network). Train from it with ``worldflux train MODEL dataset=<out_dir>``.
    """
    data = _open(dataset, download)
    out = _new_dir(Path(out_dir))
    converter = ActionConverter(data.spec.action_space, "dataset action_space")
    episodes = list(data.iterate_episodes())
    if not episodes:
        raise SpecError(f"dataset: {dataset} holds no episodes")
    rows = sum(len(ep.rewards) + 1 for ep in episodes)
    replay = Replay(rows, data.spec.observation_space, converter.space, directory=out, seed=0)
    clipped = sum(_add_episode(replay, ep, converter) for ep in episodes)
    replay.save(out)
    env_spec = getattr(data.spec, "env_spec", None)
    info = {
        "source": str(dataset),
        "dataset_id": data.spec.dataset_id,
        "env_id": getattr(env_spec, "id", None),
        "episodes": len(episodes),
        "rows": rows,
        "actions_clipped": clipped,
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=2))
    return out


def _open(dataset: str | Path, download: bool) -> Any:
    try:
        import minari
    except ImportError as err:
        raise ConfigError(
            "dataset: importing Minari data needs the minari package with HDF5 or Arrow "
            "storage; pip install 'worldflux[minari]'"
        ) from err
    path = Path(dataset)
    if path.is_dir():
        data_dir = path / "data" if (path / "data").is_dir() else path
        return minari.MinariDataset(data_dir)
    try:
        return minari.load_dataset(str(dataset), download=download)
    except (FileNotFoundError, ValueError) as err:
        hint = "" if download else " (pass download=True / --download to fetch a remote one)"
        raise ConfigError(
            f"dataset: expected a local Minari dataset id or folder, got {str(dataset)!r}: "
            f"{' '.join(str(err).split())}{hint}"
        ) from err


def _new_dir(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out_dir: expected a new or empty directory, got {out} (not empty)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _model_actions(actions: np.ndarray, converter: ActionConverter) -> tuple[np.ndarray, int]:
    """(T, A) model-format actions of an episode's raw actions, and how many were clipped."""
    if converter.discrete:
        index = actions.reshape(-1).astype(np.int64) - int(getattr(converter.inner, "start", 0))
        if index.min(initial=0) < 0 or index.max(initial=0) >= converter.dim:
            raise SpecError(f"dataset actions: expected indices in [0, {converter.dim})")
        return np.eye(converter.dim, dtype=np.float32)[index], 0
    x = actions.reshape(len(actions), -1).astype(np.float64)  # (T, ...) -> (T, A)
    scaled = 2.0 * (x - converter.low) / (converter.high - converter.low) - 1.0
    clipped = int((np.abs(scaled) > 1.0 + 1e-6).any(axis=1).sum())
    return np.clip(scaled, -1.0, 1.0).astype(np.float32), clipped


def _add_episode(replay: Replay, ep: Any, converter: ActionConverter) -> int:
    steps = len(ep.rewards)
    obs = ep.observations
    fields = obs if isinstance(obs, dict) else {"": obs}
    for key, arr in fields.items():
        if len(arr) != steps + 1:
            raise SpecError(
                f"dataset episode {ep.id}: expected {steps + 1} observations{key and ' ' + key} "
                f"for {steps} rewards, got {len(arr)}"
            )
    actions, clipped = _model_actions(np.asarray(ep.actions), converter)
    terminal = np.asarray(ep.terminations, bool)
    if terminal[:-1].any():
        raise SpecError(f"dataset episode {ep.id}: a termination before its last step")
    for t in range(steps + 1):
        o = {k: np.asarray(v[t])[None] for k, v in obs.items()} if isinstance(obs, dict) else None
        row = StepBatch(
            obs=o if o is not None else np.asarray(obs[t])[None],
            action=np.zeros((1, converter.dim), np.float32) if t == 0 else actions[t - 1][None],
            reward=np.asarray([0.0 if t == 0 else ep.rewards[t - 1]], np.float32),
            is_first=np.asarray([t == 0]),
            is_terminal=np.asarray([t > 0 and t == steps and terminal[t - 1]]),
            is_last=np.asarray([t == steps]),
        )
        replay.add(row)
    return clipped

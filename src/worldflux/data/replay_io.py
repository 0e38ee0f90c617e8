"""Save and load a `Replay` as plain ``.npy`` arrays plus ``replay.json`` (no pickle anywhere).

Folder layout: one ``<array>.npy`` per storage array (``obs.<key>``, ``action``, ``reward``,
``is_first``, ``is_terminal``, ``is_last``, ``episode``, and ``policy_version`` when the buffer
tracks versions), shaped ``(num_envs, rows, ...)`` where
``rows`` is the most rows any stream holds, and ``replay.json`` with the specs, counters and the
sampling RNG state (``track_versions`` is absent from saves made before that column existed;
they load as untracked buffers). ``replay.json`` is written last (temp file + rename): a folder
without it is an incomplete save. A disk-backed buffer saved into its own directory only flushes
and writes JSON.

After `load`, the buffer holds the same rows, counters and RNG state, so it draws the same batches.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldflux.core.exceptions import SpecError
from worldflux.core.spec import ActionSpec, FieldSpec, ObsSpec

FORMAT = "worldflux.replay/1"
META = "replay.json"


def _spec_json(spec: ObsSpec) -> dict[str, Any]:
    fields = {
        k: {"shape": list(f.shape), "image": f.is_image, "channels_last": f.channels_last}
        for k, f in spec.fields.items()
    }
    return {"is_dict": spec.is_dict, "fields": fields}


def _spec_from_json(data: dict[str, Any]) -> ObsSpec:
    fields = {
        k: FieldSpec(
            tuple(int(s) for s in f["shape"]),
            torch.uint8 if f["image"] else torch.float32,
            bool(f["image"]),
            bool(f["channels_last"]),
        )
        for k, f in data["fields"].items()
    }
    return ObsSpec(fields, bool(data["is_dict"]))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_replay(replay: Any, path: Path) -> None:
    """Write `replay` to folder `path` (see the module docstring)."""
    path.mkdir(parents=True, exist_ok=True)
    in_place = replay.directory is not None and path.resolve() == replay.directory.resolve()
    rows = replay.stream_capacity if in_place else int(replay.counts.max(initial=0))
    if in_place:
        replay.flush()
    else:
        for name, arr in replay.arrays.items():
            # (E*C, ...) -> (E, C, ...) -> first `rows` rows of each stream
            view = arr.reshape(replay.num_envs, replay.stream_capacity, *arr.shape[1:])
            tmp = path / f"{name}.tmp.npy"
            np.save(tmp, np.ascontiguousarray(view[:, :rows]), allow_pickle=False)
            os.replace(tmp, path / f"{name}.npy")
    meta = {
        "format": FORMAT,
        "stream_capacity": replay.stream_capacity,
        "num_envs": replay.num_envs,
        "rows": rows,
        "in_place": in_place,
        "obs_spec": _spec_json(replay.obs_spec),
        "action": {"dim": replay.action_spec.dim, "discrete": replay.action_spec.discrete},
        "written": replay.written.tolist(),
        "episode": replay.episode.tolist(),
        "expect_first": replay.expect_first.tolist(),
        "track_versions": bool(replay.track_versions),
        "rng": replay.get_state(),
    }
    _write_json(path / META, meta)


def _read_meta(path: Path) -> dict[str, Any]:
    file = path / META
    if not file.is_file():
        raise SpecError(f"path: {path} holds no {META} (not a saved replay, or an incomplete save)")
    meta = json.loads(file.read_text())
    if meta.get("format") != FORMAT:
        raise SpecError(f"{file}: expected format {FORMAT!r}, got {meta.get('format')!r}")
    return meta


def load_replay(path: Path, directory: Path | None = None) -> Any:
    """Read a replay saved by `save_replay`; `directory` makes the new buffer disk-backed there."""
    from worldflux.data.replay import Replay

    meta = _read_meta(path)
    num_envs, cap, rows = int(meta["num_envs"]), int(meta["stream_capacity"]), int(meta["rows"])
    obs_spec = _spec_from_json(meta["obs_spec"])
    action_spec = ActionSpec(int(meta["action"]["dim"]), bool(meta["action"]["discrete"]))
    reuse = directory is not None and meta["in_place"] and directory.resolve() == path.resolve()
    # Built field by field (not via __init__) so that an in-place load never truncates its files.
    replay = Replay.__new__(Replay)
    replay.obs_spec, replay.action_spec = obs_spec, action_spec
    replay.num_envs, replay.stream_capacity = num_envs, cap
    replay.directory = directory
    replay.track_versions = bool(meta.get("track_versions", False))
    replay.rng = np.random.default_rng(0)
    replay.arrays = {}
    for name, (shape, dtype) in replay.layout().items():
        file = path / f"{name}.npy"
        if reuse:
            arr = np.load(file, mmap_mode="r+", allow_pickle=False)
        else:
            src = np.load(file, mmap_mode="r", allow_pickle=False)
            if meta["in_place"] and src.shape == (num_envs * cap, *shape):
                src = src.reshape(num_envs, cap, *shape)  # (E*C, ...) -> (E, C, ...)
            if src.shape != (num_envs, rows, *shape):
                raise SpecError(f"{file}: expected {(num_envs, rows, *shape)}, got {src.shape}")
            arr = replay._allocate(name, shape, dtype)
            arr.reshape(num_envs, cap, *shape)[:, :rows] = src
        if arr.shape != (num_envs * cap, *shape) or arr.dtype != dtype:
            raise SpecError(
                f"{file}: expected {(num_envs * cap, *shape)} {dtype}, got {arr.shape} {arr.dtype}"
            )
        replay.arrays[name] = arr
    for key in ("written", "episode", "expect_first"):
        if len(meta[key]) != num_envs:
            raise SpecError(f"{path / META}: {key!r} must list {num_envs} streams")
    replay.written = np.asarray(meta["written"], np.int64)
    replay.episode = np.asarray(meta["episode"], np.int64)
    replay.expect_first = np.asarray(meta["expect_first"], bool)
    replay.set_state(meta["rng"])
    return replay

"""Shared by the checkpoint fault tests: deterministic trees and replays, ways to damage files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from worldflux.data import Replay
from worldflux.envs import StepBatch
from worldflux.training.checkpoint import TREE_FILE

ACT = spaces.Box(-1.0, 1.0, (2,), np.float32)


def tree_for(step: int) -> dict[str, Any]:
    """A small tree whose every value follows from `step` (so a load can be checked)."""
    return {
        "step": step,
        "w": torch.full((8, 8), float(step)),
        "rng": np.arange(4, dtype=np.int64) + step,
        "config": {"name": "stub", "lr": 1e-3},
    }


def check_tree(tree: dict[str, Any], step: int) -> None:
    assert tree["step"] == step
    assert torch.equal(tree["w"], torch.full((8, 8), float(step)))
    assert tree["rng"].tolist() == list(range(step, step + 4))


def make_replay(
    capacity: int = 400, obs_shape: tuple[int, ...] = (6,), num_envs: int = 1
) -> Replay:
    image = len(obs_shape) == 3
    space = (
        spaces.Box(0, 255, obs_shape, np.uint8)
        if image
        else spaces.Box(-np.inf, np.inf, obs_shape, np.float32)
    )
    return Replay(capacity, space, ACT, num_envs=num_envs, seed=0)


def add_rows(replay: Replay, start: int, stop: int) -> None:
    """Rows `start..stop-1` of a deterministic stream: obs and reward encode the row index."""
    field = replay.obs_spec.fields[next(iter(replay.obs_spec.fields))]
    n = replay.num_envs
    for t in range(start, stop):
        if field.is_image:
            rng = np.random.default_rng(t)
            obs = rng.integers(0, 256, (n, *field.shape), dtype=np.uint8)
        else:
            obs = np.full((n, *field.shape), t, np.float32)
        first = np.full(n, t % 50 == 0)
        replay.add(
            StepBatch(
                obs,
                np.full((n, 2), 0.0 if t % 50 == 0 else 0.5, np.float32),
                np.full(n, float(t), np.float32),
                first,
                np.zeros(n, bool),
                np.full(n, t % 50 == 49),
            )
        )


def same_replay(a: Replay, b: Replay) -> None:
    assert a.written.tolist() == b.written.tolist()
    assert a.get_state() == b.get_state()
    for name, arr in a.arrays.items():
        np.testing.assert_array_equal(arr, b.arrays[name], err_msg=name)


def to_format1(path: Path) -> None:
    """Rewrite a checkpoint as format 1 wrote it: no checksums, flat replay arrays."""
    (path / "checksums.json").unlink()
    doc = json.loads((path / TREE_FILE).read_text())
    doc["format"] = 1
    (path / TREE_FILE).write_text(json.dumps(doc))
    folder = path / "replay"
    if not folder.is_dir():
        return
    replay = Replay.load(folder)
    meta = json.loads((folder / "replay.json").read_text())
    rows = meta["rows"]
    for name, arr in replay.arrays.items():
        view = arr.reshape(replay.num_envs, replay.stream_capacity, *arr.shape[1:])
        np.save(folder / f"{name}.npy", view[:, :rows], allow_pickle=False)
    del meta["arrays"]
    meta["format"] = "worldflux.replay/1"
    (folder / "replay.json").write_text(json.dumps(meta))
    shutil.rmtree(folder / "chunks")


def truncate(file: Path, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def flip(file: Path, offset: int = -1) -> None:
    """Flip the low bit of one byte; -1: the last byte (the data region of safetensors/.npy)."""
    data = bytearray(file.read_bytes())
    data[offset] ^= 1
    file.write_bytes(bytes(data))


def disk_bytes(root: Path) -> tuple[int, int]:
    """(bytes of every file as listed, bytes of unique inodes): what hard links save."""
    listed, seen, unique = 0, set(), 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            listed += st.st_size
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                unique += st.st_size
    return listed, unique

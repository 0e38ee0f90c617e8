"""Replay's per-row policy versions (the collectors' staleness record): stored on add, returned
for sampled indices, saved and loaded (in memory and memmap), optional and checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_replay import ACT, VEC, Streams, _same, filled

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.data import Replay


def _versioned(capacity=300, steps=50, **kw) -> Replay:
    """3 streams; row t of stream e was acted by version t // 10 + e (rows 0-4 carry none)."""
    replay = Replay(capacity, VEC, ACT, num_envs=3, seed=1, track_versions=True, **kw)
    src = Streams(3, [7, 11, 5])
    for t in range(steps):
        rows = src.next()
        replay.add(rows) if t < 5 else replay.add(rows, policy_version=t // 10 + np.arange(3))
    return replay


def _expected_versions(obs: torch.Tensor) -> np.ndarray:
    stream, row = obs[..., 0].numpy().astype(np.int64), obs[..., 1].numpy().astype(np.int64)
    return np.where(row < 5, -1, row // 10 + stream)


def test_policy_versions_per_row_follow_sampled_indices(tmp_path) -> None:
    replay = _versioned()
    assert replay.arrays["policy_version"].dtype == np.int64
    idx = replay.sample_indices(64, 8)
    got = replay.policy_versions(idx)
    assert got.shape == (64, 8) and got.dtype == np.int64
    np.testing.assert_array_equal(got, _expected_versions(replay.gather(idx).obs))
    replay.save(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "replay.json").read_text())["track_versions"] is True
    for loaded in (
        Replay.load(tmp_path / "a"),
        Replay.load(tmp_path / "a", directory=tmp_path / "b"),
    ):
        assert loaded.track_versions
        _same(Replay.load(tmp_path / "a"), loaded)
        idx = loaded.sample_indices(32, 8)
        np.testing.assert_array_equal(
            loaded.policy_versions(idx), _expected_versions(loaded.gather(idx).obs)
        )
    disk = _versioned(directory=tmp_path / "buf")  # memmap, saved and loaded in place
    disk.save(tmp_path / "buf")
    again = Replay.load(tmp_path / "buf", directory=tmp_path / "buf")
    idx = again.sample_indices(32, 8)
    np.testing.assert_array_equal(
        again.policy_versions(idx), _expected_versions(again.gather(idx).obs)
    )


def test_policy_versions_are_optional_and_checked(tmp_path) -> None:
    plain = filled()
    assert not plain.track_versions and "policy_version" not in plain.arrays
    idx = plain.sample_indices(4, 3)
    np.testing.assert_array_equal(plain.policy_versions(idx), np.full((4, 3), -1))
    with pytest.raises(ConfigError, match="track_versions=True"):
        plain.add(Streams(3, [5]).next(), policy_version=1)
    versioned = Replay(30, VEC, ACT, num_envs=3, track_versions=True)
    with pytest.raises(SpecError, match="policy_version"):
        versioned.add(Streams(3, [5]).next(), policy_version=[1, 2])
    versioned.add(Streams(3, [5]).next(), policy_version=7)  # one int for every row
    assert versioned.arrays["policy_version"][[0, 10, 20]].tolist() == [7, 7, 7]
    # A save from before the column existed (no "track_versions" key) loads untracked.
    plain.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "replay.json").read_text())
    del meta["track_versions"]
    (tmp_path / "old" / "replay.json").write_text(json.dumps(meta))
    old = Replay.load(tmp_path / "old")
    assert not old.track_versions
    _same(plain, old)

"""Offline two-room dataset: recording, on-disk format, the Batch convention, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.data.offline import OfflineDataset, RecordConfig, record_tworoom
from worldflux.envs.tworoom import TwoRoomEnv

CFG = RecordConfig(episodes=3, episode_length=12, seed=5)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_tworoom(tmp_path_factory.mktemp("tworoom"), CFG)


def test_files_and_metadata(dataset_dir: Path) -> None:
    meta = json.loads((dataset_dir / "meta.json").read_text())
    assert meta["num_steps"] == 3 * 13 and meta["record"]["seed"] == 5
    frames = np.load(dataset_dir / "frames.npy", mmap_mode="r", allow_pickle=False)
    assert frames.dtype == np.uint8 and frames.shape == (39, 64, 64, 3)


def test_rows_follow_the_transition_convention(dataset_dir: Path) -> None:
    data = OfflineDataset(dataset_dir)
    env = TwoRoomEnv()
    first = data.flags[:, 0]
    assert np.flatnonzero(first).tolist() == [0, 13, 26]
    assert np.all(data.actions[first] == 0)  # no action led to a first observation
    assert np.flatnonzero(data.flags[:, 2]).tolist() == [12, 25, 38]
    for i in range(len(data)):
        np.testing.assert_array_equal(data.frames[i], env.render_at(data.positions[i]))
        if not first[i]:  # action[i] moved the agent from position i-1 to i
            moved = env.move(data.positions[i - 1].astype(np.float64), data.actions[i])
            np.testing.assert_allclose(moved, data.positions[i], atol=1e-6)


def test_sample_gives_valid_batches_inside_episodes(dataset_dir: Path) -> None:
    data = OfflineDataset(dataset_dir)
    batch = data.sample(6, 5, np.random.default_rng(0))
    assert batch.obs.shape == (6, 5, 64, 64, 3) and batch.obs.dtype == torch.uint8
    assert batch.action.shape == (6, 5, 2) and batch.action.dtype == torch.float32
    assert not batch.is_first[:, 1:].any()  # windows never cross an episode start
    assert torch.all(batch.action[batch.is_first] == 0)
    full = data.sample(4, 13, np.random.default_rng(0))
    assert full.is_first[:, 0].all() and full.is_last[:, -1].all()


def test_recording_and_sampling_are_deterministic(dataset_dir: Path, tmp_path: Path) -> None:
    again = record_tworoom(tmp_path / "again", CFG)
    a, b = OfflineDataset(dataset_dir), OfflineDataset(again)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.actions, b.actions)
    ba, bb = next(a.iterate(4, 6, seed=1)), next(b.iterate(4, 6, seed=1))
    assert torch.equal(ba.obs, bb.obs) and torch.equal(ba.action, bb.action)


def test_bad_input_raises(dataset_dir: Path, tmp_path: Path) -> None:
    data = OfflineDataset(dataset_dir)
    with pytest.raises(SpecError, match="seq_len"):
        data.sample(2, 14, np.random.default_rng(0))
    with pytest.raises(SpecError, match="meta.json"):
        OfflineDataset(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(SpecError, match="format"):
        OfflineDataset(tmp_path)
    with pytest.raises(ConfigError, match="noise"):
        RecordConfig(noise=-1.0)


def test_straight_episodes_add_wall_contact(tmp_path: Path) -> None:
    env = TwoRoomEnv()
    contact_x = 0.5 - env.wall_width / 2 - env.agent_radius  # left face, agent touching it
    counts = []
    for prob in (0.0, 1.0):
        cfg = RecordConfig(episodes=10, episode_length=30, straight_prob=prob, seed=1)
        data = OfflineDataset(record_tworoom(tmp_path / str(prob), cfg))
        x = np.asarray(data.positions[:, 0], np.float64)
        counts.append(int(np.sum(np.abs(np.abs(x - 0.5) - (0.5 - contact_x)) < 1e-3)))
    assert counts[1] > 2 * counts[0], counts

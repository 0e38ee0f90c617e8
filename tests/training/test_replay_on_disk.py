"""``replay_on_disk=true``: the run's replay lives in memmaps under ``<run_dir>/replay``, from a
fresh run and after a resume, and the resumed run continues exactly as an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worldflux.core.exceptions import ConfigError
from worldflux.training.run import build_trainer, resume_trainer
from worldflux.training.run_config import parse_overrides

ITEMS = [
    "steps=240", "seed=2", "seed_steps=80", "updates_per_step=0.25", "eval_every=0",
    "checkpoint_every=120", "log_every=120", "replay_capacity=600", "num_envs=2",
    "progress=false", "tensorboard=false", "agent.batch_size=8",
]  # fmt: skip


def _weights(trainer) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {k: v.clone() for k, v in trainer.agent.modules()["model"].state_dict().items()}


def _build(run_dir: Path, *extra: str):  # noqa: ANN202
    return build_trainer(parse_overrides("tdmpc2:debug", "CartPole-v1", [*ITEMS, *extra]), run_dir)


def test_disk_replay_is_memmapped_under_the_run_dir_and_resumes_exactly(tmp_path: Path) -> None:
    full = _build(tmp_path / "full", "replay_on_disk=true")
    assert all(isinstance(a, np.memmap) for a in full.replay.arrays.values())
    assert full.replay.directory == tmp_path / "full" / "replay"
    full.train()
    assert (tmp_path / "full" / "replay" / "obs.obs.npy").is_file()

    split = _build(tmp_path / "split", "replay_on_disk=true")
    split.train(stop_at=120)
    split.source.close()
    resumed = resume_trainer(tmp_path / "split")
    assert resumed.step == 120
    assert all(isinstance(a, np.memmap) for a in resumed.replay.arrays.values())
    assert resumed.replay.directory == tmp_path / "split" / "replay"
    resumed.train()
    a, b = _weights(full), _weights(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for name, arr in full.replay.arrays.items():
        np.testing.assert_array_equal(arr, resumed.replay.arrays[name], err_msg=name)
    # and the in-RAM replay of the same run holds the same rows (the test can tell runs apart)
    ram = _build(tmp_path / "ram")
    assert not isinstance(ram.replay.arrays["obs.obs"], np.memmap)
    ram.train()
    np.testing.assert_array_equal(ram.replay.arrays["obs.obs"], full.replay.arrays["obs.obs"])
    other = _build(tmp_path / "other", "seed=3", "replay_on_disk=true")
    other.train(stop_at=120)
    assert not np.array_equal(other.replay.arrays["obs.obs"], full.replay.arrays["obs.obs"])


def test_replay_on_disk_is_checked_up_front(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="replay_on_disk: expected true or false"):
        parse_overrides("tdmpc2:debug", "CartPole-v1", ["replay_on_disk=yes"])

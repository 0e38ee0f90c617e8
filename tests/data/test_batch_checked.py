"""`Batch.checked`: flag values are read where a batch enters, never per update. A replay's batches
come checked (`Replay.add` checks every row, `Replay.load` every saved row); any other batch is
checked by the loss in eager mode, and by the agent before compiled code."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_replay import filled

from worldflux.core.batch import Batch
from worldflux.core.exceptions import SpecError
from worldflux.core.model import WorldModel
from worldflux.core.registry import create_world_model
from worldflux.data import Replay


def _model() -> WorldModel:
    box = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    return create_world_model("jepa:debug", box, gym.spaces.Box(-1.0, 1.0, (2,), np.float32))


def _batch(terminal_not_last: bool) -> Batch:
    b, t = 2, 5
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    terminal = torch.zeros(b, t, dtype=torch.bool)
    terminal[1, 2] = terminal_not_last
    last = torch.zeros(b, t, dtype=torch.bool)
    obs, action, reward = torch.randn(b, t, 3), torch.zeros(b, t, 2), torch.zeros(b, t)
    return Batch(obs, action, reward, first, terminal, last)


def test_validate_marks_a_batch_checked_and_to_keeps_it() -> None:
    good = _batch(False)
    assert not good.checked
    assert good.validate() is good and good.checked
    assert good.to("cpu").checked
    assert not _batch(False).to("cpu").checked
    bad = _batch(True)
    with pytest.raises(SpecError, match="is_terminal"):
        bad.validate()
    assert not bad.checked


def test_an_unchecked_batch_is_checked_by_the_loss_every_time() -> None:
    model = _model()
    for _ in range(2):
        with pytest.raises(SpecError, match="is_terminal"):
            model.loss(_batch(True))


def test_a_checked_batch_reads_no_flag_values(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    batch = _batch(False).validate()

    def no_read(self: torch.Tensor) -> bool:
        raise AssertionError("a flag value was read")

    monkeypatch.setattr(torch.Tensor, "__bool__", no_read)
    model.loss(batch)  # would raise if `validate_in_loss` read the flags


def test_replay_batches_come_checked(tmp_path: Path) -> None:
    replay = filled(num_envs=2, capacity=60, steps=30)
    assert replay.sample(4, 6).checked
    replay.save(tmp_path / "buf")
    assert Replay.load(tmp_path / "buf").sample(4, 6).checked


def test_a_saved_replay_with_bad_flags_is_refused_at_load(tmp_path: Path) -> None:
    """`gather` trusts the stored flags, so `load` checks what `add` would have refused."""
    disk = filled(num_envs=2, capacity=60, steps=30, directory=tmp_path / "buf")
    disk.save(tmp_path / "buf")  # in place: flat .npy files
    terminal = np.load(tmp_path / "buf" / "is_terminal.npy", mmap_mode="r+")
    last = np.load(tmp_path / "buf" / "is_last.npy", mmap_mode="r")
    row = int(np.flatnonzero(~last)[3])
    terminal[row] = True
    terminal.flush()
    del terminal
    with pytest.raises(SpecError, match="is_terminal but not is_last"):
        Replay.load(tmp_path / "buf")

"""`seed_updates`: TD-MPC2's burst of updates on the seed data when seeding ends."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from test_trainer import make_trainer, weights
from training_stub import StubAgent

from worldflux.training.checkpoint import load_checkpoint
from worldflux.training.logging import read_metrics
from worldflux.training.signals import Terminated


def test_seed_updates_burst_when_seeding_ends(tmp_path: Path) -> None:
    # 2 envs: iterations of 2 env steps; 0.5 updates per step after 100 seed steps
    plain = make_trainer(tmp_path / "plain", steps=300, seed_steps=100, eval_every=0)
    assert plain.train()["updates"] == 100  # (300 - 100) * 0.5
    burst = make_trainer(
        tmp_path / "burst", steps=300, seed_steps=100, seed_updates=50, eval_every=0
    )
    burst.train(stop_at=100)
    assert burst.updates == 0  # no update during seeding
    burst.train(stop_at=102)
    assert burst.updates == 50  # the iteration that ends seeding makes the burst instead of 1
    assert burst.train()["updates"] == 50 + 99  # then the regular rate: 198 * 0.5


def test_seed_updates_below_the_regular_rate_change_nothing(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, steps=300, seed_steps=100, seed_updates=1, eval_every=0)
    assert t.train()["updates"] == 100


def test_sigterm_during_the_burst_stops_within_16_updates_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop does not wait for a long update burst (TD-MPC2's 2,500 updates take half an hour
    on a CPU): it checkpoints between two updates, and the resumed run finishes the burst, then
    goes on exactly as an uninterrupted run."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("a custom SIGTERM handler is installed; the trainer leaves it alone")
    settings = dict(steps=200, seed_steps=100, seed_updates=200, eval_every=150)
    full = make_trainer(tmp_path / "full", **settings)
    full.train()
    split = make_trainer(tmp_path / "split", **settings)
    original = StubAgent.update

    def update(self: StubAgent, batch: Any) -> Any:
        if self.calls == 40:  # the 41st update of the burst
            signal.raise_signal(signal.SIGTERM)
        return original(self, batch)

    monkeypatch.setattr(StubAgent, "update", update)
    with pytest.raises(Terminated):
        split.train()
    monkeypatch.undo()
    assert 41 <= split.updates <= 48  # the next multiple of 16, not the burst's 200
    stopped = split.step
    tree = load_checkpoint(split.checkpoints.path_for(stopped))
    assert not tree["partial_step"] and tree["counters"]["pending"] == stopped - 2
    del split
    resumed = make_trainer(tmp_path / "split", **settings)
    resumed.restore()
    resumed.train()
    assert resumed.updates == full.updates
    a, b = weights(full), weights(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    evals = [r["step"] for r in read_metrics(tmp_path / "split", "eval")]
    assert evals == [r["step"] for r in read_metrics(tmp_path / "full", "eval")]

"""`seed_updates`: TD-MPC2's burst of updates on the seed data when seeding ends."""

from __future__ import annotations

from pathlib import Path

from test_trainer import make_trainer


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

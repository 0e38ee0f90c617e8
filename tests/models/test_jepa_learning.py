"""Tiny end-to-end JEPA training on recorded two-room data (fast), and the full benchmark (slow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from worldflux.core.registry import create_world_model
from worldflux.data.offline import OfflineDataset, RecordConfig, record_tworoom
from worldflux.envs.tworoom import TwoRoomEnv
from worldflux.models.jepa import JEPA

ROOT = Path(__file__).resolve().parents[2]


def _train(
    data: OfflineDataset, regularizer: str, seed: int = 0, lr: float = 1e-3, updates: int = 40
) -> tuple[list[dict[str, float]], JEPA]:
    env = TwoRoomEnv()
    # SIGReg's statistic grows with the batch (N=8 here), so the tiny run weights it up
    model = create_world_model(
        "jepa:debug",
        env.observation_space,
        env.action_space,
        seed=seed,
        regularizer=regularizer,
        reg_weight=1.0,
    )
    assert isinstance(model, JEPA)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    stream = data.iterate(8, 6, seed=seed)
    history = []
    for _ in range(updates):
        loss, metrics = model.loss(next(stream))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: float(v) for k, v in metrics.items()})
    return history, model


def tiny_training(
    tmp_path: Path, seed: int, lr: float = 1e-3, updates: int = 40, ablation: bool = False
) -> dict[str, float]:
    """`updates` SIGReg updates on 6 recorded episodes (`ablation`: and the same without an
    anti-collapse term). Ratios are last / first."""
    cfg = RecordConfig(episodes=6, episode_length=24, seed=seed)
    data = OfflineDataset(record_tworoom(tmp_path / f"data{seed}", cfg))
    torch.manual_seed(seed)
    history, model = _train(data, "sigreg", seed, lr, updates)
    first, last = history[0], history[-1]
    with torch.no_grad():
        state = model.encode(torch.from_numpy(np.array(data.frames[:64])))
    out = {
        "finite": float(all(np.isfinite(list(h.values())).all() for h in history)),
        "pred": last["pred_loss"] / first["pred_loss"],
        "emb_std_min": last["emb_std_min"],
        "eff_rank": last["eff_rank"],
        "rep_std_min": float(state.tensors["rep"].std(0).min()),
    }
    if ablation:
        out["none_std_min"] = _train(data, "none", seed, lr, updates)[0][-1]["emb_std_min"]
    return out


def test_tiny_training_learns_and_sigreg_prevents_collapse(tmp_path: Path) -> None:
    """40 updates. Measured on seeds 0-9 (model, data and batch seeds): prediction loss
    last/first 0.043-0.12, smallest embedding std 0.31-1.0 (1.0 at init), effective rank
    6.8-8.2, smallest representation std over 64 frames 0.32-1.0; learning rate 0: see
    benchmarks/results/learning_test_seeds.md. Bars: < 0.2, > 0.2, > 2.0, > 0.2."""
    r = tiny_training(tmp_path, 0)
    assert r["finite"] == 1.0, r
    assert r["pred"] < 0.2, r
    assert r["emb_std_min"] > 0.2, r  # no dimension has collapsed
    assert r["eff_rank"] > 2.0, r  # more than a line: the agent moves in 2-D
    assert r["rep_std_min"] > 0.2, r  # distinct frames, distinct reps


ABLATION_SEEDS = range(10)


@pytest.mark.slow
def test_without_anti_collapse_term_the_embedding_shrinks(tmp_path: Path) -> None:
    """The ablation without SIGReg shrinks the representation, but not on every seed: after
    40 updates its smallest embedding std was below half SIGReg's on 4 of 10 seeds (the old
    single-seed fast assertion), and after 200 updates it is still 1.01 and 0.90 on 2 of 10
    seeds (0.02-0.37 on the other 8; SIGReg 0.62-0.97). So the verdict is over seeds 0-9 at
    200 updates (~1 minute): the mean smallest std without the term (measured 0.29) must stay
    below 0.75 x SIGReg's mean (measured 0.70; ratio 0.41). Learning rate 0 keeps both at
    their initial 0.98-1.01 (ratio 1.0)."""
    runs = [tiny_training(tmp_path, s, updates=200, ablation=True) for s in ABLATION_SEEDS]
    none = float(np.mean([r["none_std_min"] for r in runs]))
    sigreg = float(np.mean([r["emb_std_min"] for r in runs]))
    assert none < 0.75 * sigreg, (none, sigreg, runs)


@pytest.mark.slow
def test_full_benchmark_reaches_goals(tmp_path: Path) -> None:
    out = tmp_path / "jepa_tworoom"
    cmd = [sys.executable, str(ROOT / "benchmarks/jepa_tworoom.py"), "--out", str(out)]
    cmd += ["--variants", "sigreg", "--ckpt-dir", str(tmp_path)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    import json

    result = json.loads(out.with_suffix(".json").read_text())
    assert result["runs"][0]["final"]["success_rate"] >= 0.8

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


def _train(data: OfflineDataset, regularizer: str) -> tuple[list[dict[str, float]], JEPA]:
    env = TwoRoomEnv()
    # SIGReg's statistic grows with the batch (N=8 here), so the tiny run weights it up
    model = create_world_model(
        "jepa:debug",
        env.observation_space,
        env.action_space,
        seed=0,
        regularizer=regularizer,
        reg_weight=1.0,
    )
    assert isinstance(model, JEPA)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    stream = data.iterate(8, 6, seed=0)
    history = []
    for _ in range(40):
        loss, metrics = model.loss(next(stream))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: float(v) for k, v in metrics.items()})
    return history, model


def test_tiny_training_learns_and_sigreg_prevents_collapse(tmp_path: Path) -> None:
    data = OfflineDataset(record_tworoom(tmp_path, RecordConfig(episodes=6, episode_length=24)))
    history, model = _train(data, "sigreg")
    assert all(np.isfinite(list(h.values())).all() for h in history)
    first, last = history[0], history[-1]
    assert last["pred_loss"] < 0.2 * first["pred_loss"]
    assert last["emb_std_min"] > 0.3  # no dimension has collapsed
    assert last["eff_rank"] > 2.0  # more than a line: the agent moves in 2-D
    with torch.no_grad():
        state = model.encode(torch.from_numpy(np.array(data.frames[:64])))
    assert float(state.tensors["rep"].std(0).min()) > 0.3  # distinct frames, distinct reps
    # the ablation without anti-collapse term shrinks the representation instead
    ablation, _ = _train(data, "none")
    assert ablation[-1]["emb_std_min"] < 0.5 * last["emb_std_min"]


@pytest.mark.slow
def test_full_benchmark_reaches_goals(tmp_path: Path) -> None:
    out = tmp_path / "jepa_tworoom"
    cmd = [sys.executable, str(ROOT / "benchmarks/jepa_tworoom.py"), "--out", str(out)]
    cmd += ["--variants", "sigreg", "--ckpt-dir", str(tmp_path)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    import json

    result = json.loads(out.with_suffix(".json").read_text())
    assert result["runs"][0]["final"]["success_rate"] >= 0.8

"""`benchmarks/learn.py --collect`: seeds whose run dirs are gone keep their recorded curves."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL, ENV, TAG = "dreamerv3:size1m", "dmc:cartpole-balance", "t"
SETTINGS = ["env.action_repeat=2", "eval_every=5000"]


def _script(name: str) -> ModuleType:
    """Load `benchmarks/<name>.py` (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _learn() -> ModuleType:
    return _script("learn")


def _run_dir(logs: Path, seed: int, points: dict[int, float]) -> None:
    learn = _learn()
    seed_dir = logs / learn.run_name(MODEL, ENV, TAG) / f"seed{seed}"
    seed_dir.mkdir(parents=True)
    lines = [{"kind": "eval", "step": s, "return_mean": r} for s, r in points.items()]
    seed_dir.joinpath("metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    spec = {"env": {"id": ENV, "action_repeat": 2}, "trainer": {"seed": seed}}
    seed_dir.joinpath("run.json").write_text(json.dumps(spec))


def _recorded(results: Path, overrides: list[str]) -> Path:
    learn = _learn()
    seeds = {
        "seed0": {"steps": [5000, 10000], "returns": [300.0, 700.0], "profile": None},
        "seed1": {"steps": [5000], "returns": [200.0], "profile": None},
    }
    out = results / f"learn_{learn.run_name(MODEL, ENV, TAG)}.json"
    out.write_text(json.dumps({"overrides": overrides, "seeds": seeds, "run_spec": {"old": 1}}))
    return out


def test_collect_keeps_recorded_seeds_and_takes_run_dirs_over_them(tmp_path: Path) -> None:
    logs, results = tmp_path / "logs", tmp_path / "results"
    results.mkdir()
    _recorded(results, SETTINGS)
    _run_dir(logs, 1, {5000: 250.0, 10000: 650.0})  # seed 1 started again: its run dir wins
    _run_dir(logs, 2, {5000: 400.0, 10000: 800.0})
    out = _learn().collect(MODEL, ENV, 10000, SETTINGS, TAG, logs, None, results)
    doc = json.loads(out.read_text())
    assert list(doc["seeds"]) == ["seed0", "seed1", "seed2"]
    assert doc["seeds"]["seed0"]["returns"] == [300.0, 700.0]  # recorded, no run dir
    assert doc["seeds"]["seed1"]["returns"] == [250.0, 650.0]
    assert doc["seeds"]["seed2"]["steps"] == [5000, 10000]
    assert doc["run_spec"]["trainer"]["seed"] == 1  # from a run dir, not the old record
    assert doc["action_repeat"] == 2 and doc["complete"] is True


def test_collect_refuses_to_mix_settings_and_leaves_the_record(tmp_path: Path) -> None:
    logs, results = tmp_path / "logs", tmp_path / "results"
    results.mkdir()
    out = _recorded(results, ["eval_every=1000"])
    before = out.read_text()
    _run_dir(logs, 2, {5000: 400.0})
    with pytest.raises(SystemExit, match=r"seed0.*seed1.*another --tag"):
        _learn().collect(MODEL, ENV, 10000, SETTINGS, TAG, logs, None, results)
    assert out.read_text() == before


def test_collect_without_a_record_writes_the_run_dirs(tmp_path: Path) -> None:
    logs, results = tmp_path / "logs", tmp_path / "results"
    results.mkdir()
    _run_dir(logs, 0, {5000: 100.0, 5000 * 2: 200.0})
    out = _learn().collect(MODEL, ENV, 20000, SETTINGS, TAG, logs, None, results)
    doc = json.loads(out.read_text())
    assert list(doc["seeds"]) == ["seed0"] and doc["complete"] is False


def test_collect_averages_training_episodes_around_each_eval_like_the_reference(
    tmp_path: Path,
) -> None:
    learn = _learn()
    logs, results = tmp_path / "logs", tmp_path / "results"
    results.mkdir()
    _run_dir(logs, 0, {10000: 5.0, 30000: 6.0, 60000: 7.0})
    metrics = logs / learn.run_name(MODEL, ENV, TAG) / "seed0" / "metrics.jsonl"
    episodes = [(500, 0.0), (20000, 100.0), (20000, 100.0), (25000, 300.0), (41000, 900.0)]
    with metrics.open("a") as f:  # (20000 twice: a resumed run logged that episode again)
        for step, ret in episodes:
            f.write(json.dumps({"kind": "episode", "step": step, "return": ret, "env": 0}) + "\n")
    out = learn.collect(MODEL, ENV, 60000, SETTINGS, TAG, logs, None, results)
    doc = json.loads(out.read_text())
    seed = doc["seeds"]["seed0"]
    assert doc["train_window"] == learn.TRAIN_WINDOW == 10000
    plot = _script("plot")
    assert plot.train_label(doc, 3) == "ours, train episodes +-10k, mean of 3"
    # 10k: episodes at 500 and 20,000; 30k: 20,000 and 25,000 (41,000 is 11k away); 60k: none
    assert seed["train_returns"] == [50.0, 200.0, None]
    assert plot.train_mean({"seed0": seed}) == ([10000, 30000], [50.0, 200.0])


def test_table_row_matches_the_head_and_counts_agent_steps(tmp_path: Path) -> None:
    learn, plot = _learn(), _script("plot")
    logs, results = tmp_path / "logs", tmp_path / "results"
    results.mkdir()
    _run_dir(logs, 0, {5000: 100.0, 10000: 600.0})
    _run_dir(logs, 1, {5000: 300.0, 10000: 400.0})
    out = learn.collect(MODEL, ENV, 20000, SETTINGS, TAG, logs, None, results)
    row = plot.table_row(out).split(" | ")
    head = plot.TABLE_HEAD.splitlines()[0].split(" | ")
    assert len(row) == len(head)
    cell = dict(zip(head, row, strict=True))
    assert cell["agent steps done / budget"] == "10,000 / 20,000"
    assert cell["last eval return per seed"] == "600, 400" and cell["mean"] == "500"
    # target 500 on cartpole-balance: seed 0 reaches it at 10k, seed 1 never, the mean at 10k
    assert cell["first eval step >= target, per seed"] == "10000, -"
    assert cell["... for the seed mean"] == "10000"


def test_a_coarsely_logged_reference_is_drawn_as_points_not_a_line() -> None:
    plot = _script("plot")
    tdmpc2 = plot.reference_curve("tdmpc2:1m", "dmc:cartpole-balance")  # logged every 100k
    style, suffix = plot.reference_style(tdmpc2["steps"][:2], 50000)
    assert style["ls"] == "none" and suffix == " (logged at 0, 100k only)"
    dreamer = plot.reference_curve("dreamerv3:size1m", "dmc:reacher-easy")  # every 10k
    assert plot.reference_style(dreamer["steps"][:10], 100000)[0]["ls"] == "-."

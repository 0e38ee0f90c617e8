"""Checkpoint faults: damaged files, flipped bytes, a full disk, dead writers; replay kept once."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ckpt_helpers import (
    add_rows,
    check_tree,
    disk_bytes,
    flip,
    make_replay,
    same_replay,
    to_format1,
    tree_for,
    truncate,
)

from worldflux.core.exceptions import SpecError, WorldFluxError
from worldflux.data import Replay, replay_chunks
from worldflux.training import checkpoint_io
from worldflux.training.checkpoint import CheckpointError, CheckpointManager, load_checkpoint
from worldflux.training.logging import read_metrics, truncate_metrics


def saved(tmp_path: Path, steps: tuple[int, ...] = (10,), keep: int = 3) -> CheckpointManager:
    """Checkpoints at `steps` of a run whose replay holds `step` rows."""
    manager = CheckpointManager(tmp_path, keep=keep)
    replay, rows = make_replay(), 0
    for step in steps:
        add_rows(replay, rows, step)
        rows = step
        manager.save(step, tree_for(step), replay=replay)
    return manager


def one_chunk(path: Path) -> Path:
    return sorted((path / "replay" / "chunks").iterdir())[0]


# --- item 5: damaged files end in one line naming the file ----------------------------------

DAMAGE = {
    "truncated tensors": (lambda p: truncate(p / "tensors.safetensors"), "tensors.safetensors"),
    "truncated tree": (lambda p: truncate(p / "tree.json"), "tree.json"),
    "truncated replay json": (lambda p: truncate(p / "replay" / "replay.json"), "replay.json"),
    "truncated chunk": (lambda p: truncate(one_chunk(p)), ".npy"),
    "flipped tensors": (lambda p: flip(p / "tensors.safetensors"), "tensors.safetensors"),
    "flipped chunk": (lambda p: flip(one_chunk(p)), ".npy"),
    "flipped manifest": (lambda p: flip(p / "checksums.json", 30), "checksums.json"),
}
DAMAGE_V1 = {
    "truncated tensors": (lambda p: truncate(p / "tensors.safetensors"), "tensors.safetensors"),
    "truncated tree": (lambda p: truncate(p / "tree.json"), "tree.json"),
    "truncated replay json": (lambda p: truncate(p / "replay" / "replay.json"), "replay.json"),
    "truncated npy": (lambda p: truncate(p / "replay" / "reward.npy", 0.9), "reward.npy"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_file_is_one_line_naming_it(tmp_path: Path, kind: str) -> None:
    path = saved(tmp_path).path_for(10)
    damage, name = DAMAGE[kind]
    damage(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, with_replay=True)
    message = str(info.value)
    assert "\n" not in message and name in message and "damaged" in message, message


@pytest.mark.parametrize("kind", sorted(DAMAGE_V1))
def test_damaged_format1_file_is_one_line_naming_it(tmp_path: Path, kind: str) -> None:
    path = saved(tmp_path).path_for(10)
    to_format1(path)
    damage, name = DAMAGE_V1[kind]
    damage(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, with_replay=True)
    assert "\n" not in str(info.value) and name in str(info.value), str(info.value)


def test_format1_checkpoints_still_load(tmp_path: Path) -> None:
    manager = saved(tmp_path, (30,))
    want = Replay.load(manager.path_for(30) / "replay")
    to_format1(manager.path_for(30))
    tree = load_checkpoint(manager.path_for(30), with_replay=True)
    check_tree(tree, 30)
    same_replay(tree["replay"], want)


# --- item 6: flipped bytes never load silently ----------------------------------------------


def test_flipped_bytes_are_caught_by_checksums(tmp_path: Path) -> None:
    path = saved(tmp_path).path_for(10)
    doc = (path / "tree.json").read_text()
    assert '["step", 10]' in doc
    (path / "tree.json").write_text(doc.replace('["step", 10]', '["step", 11]'))  # valid JSON
    with pytest.raises(CheckpointError, match="tree.json is damaged: checksum mismatch"):
        load_checkpoint(path)
    standalone = tmp_path / "standalone"
    replay = make_replay()
    add_rows(replay, 0, 20)
    replay.save(standalone)
    flip(sorted((standalone / "chunks").iterdir())[0], -3)
    with pytest.raises(SpecError, match="does not match its name"):
        Replay.load(standalone)


# --- item 5: resume and eval fall back to the newest intact checkpoint ------------------------


def test_load_latest_skips_damaged_checkpoints_with_a_notice(tmp_path: Path, capsys) -> None:
    manager = saved(tmp_path, (10, 20, 30))
    flip(manager.path_for(30) / "tensors.safetensors")
    path, tree = manager.load_latest(with_replay=True)
    assert path == manager.path_for(20)
    check_tree(tree, 20)
    assert len(tree["replay"]) == 20
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step_0000000030/tensors.safetensors is damaged" in err[0]
    assert err[0].endswith(f"using {manager.path_for(20)} instead")
    assert manager.latest() == manager.path_for(20)  # known damaged: no longer listed
    manager.save(30, tree_for(30), replay=tree["replay"])  # a resumed run rewrites that step
    check_tree(manager.load_latest()[1], 30)
    for step in (10, 20, 30):
        truncate(manager.path_for(step) / "tree.json")
    with pytest.raises(CheckpointError, match="all 3 checkpoints .* are damaged; the newest: .*30"):
        CheckpointManager(tmp_path).load_latest()


def test_trainer_resume_falls_back_and_drops_a_torn_metrics_line(tmp_path: Path, capsys) -> None:
    from test_trainer import make_trainer

    first = make_trainer(tmp_path, steps=200, checkpoint_every=100, eval_every=0)
    first.train()
    truncate(first.checkpoints.path_for(200) / "tensors.safetensors")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 200, "kind": "train", "lo')  # what a kill -9 mid-append leaves
    resumed = make_trainer(tmp_path, steps=200, checkpoint_every=100, eval_every=0)
    resumed.restore()
    assert resumed.step == 100
    same_replay(resumed.replay, load_checkpoint(tmp_path / "checkpoints" / "step_0000000100",
                                                with_replay=True)["replay"])  # fmt: skip
    err = capsys.readouterr().err
    assert "step_0000000200/tensors.safetensors is damaged" in err and "torn last line" in err
    assert all(r["step"] <= 100 for r in read_metrics(tmp_path))
    assert (tmp_path / "metrics.jsonl").read_text().endswith("}\n")


def test_load_agent_resolves_latest_and_falls_back(tmp_path: Path, capsys) -> None:
    from worldflux.agents.io import load_run_agent
    from worldflux.training.run import build_trainer
    from worldflux.training.run_config import parse_overrides

    items = ["steps=20", "seed_steps=20", "checkpoint_every=10", "eval_every=0",
             "progress=false", "tensorboard=false", "agent.batch_size=8"]  # fmt: skip
    run = tmp_path / "run"
    build_trainer(parse_overrides("tdmpc2:debug", "Pendulum-v1", items), run).train()
    agent, spec = load_run_agent(run / "checkpoints" / "latest")
    assert spec.model_name == "tdmpc2:debug"
    truncate(run / "checkpoints" / "step_0000000020" / "tree.json")
    for where in (run, run / "checkpoints" / "latest"):
        load_run_agent(where)
        assert "step_0000000020/tree.json is damaged" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="tree.json is damaged"):
        load_run_agent(run / "checkpoints" / "step_0000000020")
    with pytest.raises(CheckpointError, match="empty does not exist"):
        load_run_agent(tmp_path / "empty" / "checkpoints" / "latest")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no checkpoints yet"):
        load_run_agent(tmp_path / "empty" / "checkpoints" / "latest")


def test_torn_metrics_lines(tmp_path: Path, capsys) -> None:
    good = [json.dumps({"step": s, "kind": "train", "loss": 1.0}) for s in (10, 20, 30)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(good) + '\n{"step": 40, "ki')
    assert [r["step"] for r in read_metrics(tmp_path)] == [10, 20, 30]
    assert truncate_metrics(tmp_path, 20) == 1
    assert "torn last line" in capsys.readouterr().err
    assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(good[:2]) + "\n"
    (tmp_path / "metrics.jsonl").write_text(good[0] + "\n{oops\n" + good[1] + "\n")
    with pytest.raises(WorldFluxError, match="metrics.jsonl: line 2 is not a JSON record"):
        read_metrics(tmp_path)


# --- item 7: a full disk ------------------------------------------------------------------------


def _fail_on_call(n: int, err: int, real):  # noqa: ANN001, ANN202 - a test double
    calls = [0]

    def fake(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls[0] += 1
        if calls[0] == n:
            raise OSError(err, "No space left on device")
        return real(*args, **kwargs)

    return fake


@pytest.mark.parametrize(
    "where", ["chunk", "manifest"], ids=["ENOSPC writing a chunk", "EDQUOT writing checksums"]
)
def test_full_disk_removes_the_partial_checkpoint(tmp_path: Path, monkeypatch, where) -> None:
    manager = saved(tmp_path, (10, 20))
    replay = Replay.load(manager.path_for(20) / "replay")
    add_rows(replay, 20, 30)
    if where == "chunk":
        fake = _fail_on_call(2, errno.ENOSPC, replay_chunks.write_chunk)
        monkeypatch.setattr(replay_chunks, "write_chunk", fake)
    else:
        fake = _fail_on_call(1, errno.EDQUOT, checkpoint_io.write_manifest)
        monkeypatch.setattr(checkpoint_io, "write_manifest", fake)
    with pytest.raises(CheckpointError) as info:
        manager.save(30, tree_for(30), replay=replay)
    message = str(info.value)
    assert "disk full" in message and "step_0000000030" in message, message
    assert "older checkpoints are kept" in message and "\n" not in message
    assert sorted(p.name for p in manager.root.iterdir()) == ["step_0000000010", "step_0000000020"]
    check_tree(manager.load_latest()[1], 20)


def test_sweep_removes_dead_writers_temp_dirs(tmp_path: Path) -> None:
    manager = saved(tmp_path, (10, 20))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid is free
    root = manager.root
    manager.path_for(20).rename(root / f".step_0000000020.old-{dead.pid}")  # cut-off overwrite
    for name in (f".step_0000000020.tmp-{dead.pid}", f".step_0000000030.tmp-{dead.pid}",
                 f".step_0000000005.del-{dead.pid}", ".step_0000000040.tmp-1"):  # fmt: skip
        (root / name).mkdir()
        (root / name / "tensors.safetensors").write_bytes(b"x" * 100)
    CheckpointManager(tmp_path).sweep()
    left = sorted(p.name for p in root.iterdir())
    assert left == [".step_0000000040.tmp-1", "step_0000000010", "step_0000000020"]  # pid 1 lives
    check_tree(load_checkpoint(manager.path_for(20)), 20)


# --- item 8: the replay is stored once per run ---------------------------------------------------


def test_checkpoints_share_replay_chunks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(replay_chunks, "CHUNK_BYTES", 1 << 18)  # 21 image rows per chunk
    manager = CheckpointManager(tmp_path, keep=3)
    replay = make_replay(capacity=1000, obs_shape=(64, 64, 3))
    add_rows(replay, 0, 600)
    for step in (600, 610, 620):
        add_rows(replay, len(replay), step)
        manager.save(step, tree_for(step), replay=replay)
    one = disk_bytes(manager.path_for(620) / "replay")[1]
    listed, unique = disk_bytes(manager.root)
    assert listed > 2.9 * one  # three full replays as listed...
    assert unique < 1.2 * one  # ...but about one on disk
    manager.save(630, tree_for(630), replay=replay)  # deletes step 600, whose chunks 630 shares
    assert [p.name[-3:] for p in manager.list()] == ["610", "620", "630"]
    tree = load_checkpoint(manager.path_for(630), with_replay=True)
    same_replay(tree["replay"], replay)
    assert np.asarray(replay.arrays["reward"][:620]).tolist() == list(range(620))

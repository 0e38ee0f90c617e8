"""Checkpoint codec and directory handling: round trips, atomic writes, retention, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from worldflux.training.checkpoint import (
    TREE_FILE,
    CheckpointError,
    CheckpointManager,
    capture_rng,
    load_checkpoint,
    pack,
    restore_rng,
    save_checkpoint,
    unpack,
)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**62), 2**62), st.text(max_size=8),
                    st.floats(allow_nan=False))  # fmt: skip
trees = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.tuples(kids, kids),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers(0, 99)), kids, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(trees)
def test_pack_roundtrip_through_json(tree: object) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skel = json.loads(json.dumps(pack(tree, tensors)))
    assert unpack(skel, tensors) == tree


def test_tensors_arrays_and_numpy_scalars_keep_dtype(tmp_path: Path) -> None:
    tree = {
        "w": torch.arange(6, dtype=torch.float64).reshape(2, 3),
        "a": np.arange(4, dtype=np.uint32),
        "s": np.float32(1.25),
        "i": {3: (np.int64(7), "x")},
        "empty": torch.zeros(0),
    }
    save_checkpoint(tmp_path / "c", tree)
    back = load_checkpoint(tmp_path / "c")
    assert torch.equal(back["w"], tree["w"]) and back["w"].dtype == torch.float64
    assert back["a"].dtype == np.uint32 and back["a"].tolist() == [0, 1, 2, 3]
    assert isinstance(back["s"], np.float32) and back["s"] == np.float32(1.25)
    assert back["i"] == {3: (7, "x")} and isinstance(back["i"][3][0], np.int64)
    assert back["empty"].shape == (0,)


def test_unsupported_objects_are_named() -> None:
    with pytest.raises(CheckpointError, match=r"cannot store set at '/opt/x'"):
        pack({"opt": {"x": {1, 2}}}, {})


def test_rng_roundtrip() -> None:
    tensors: dict[str, torch.Tensor] = {}
    state = unpack(json.loads(json.dumps(pack(capture_rng(), tensors))), tensors)
    expected = (random.random(), np.random.rand(), torch.rand(2))
    restore_rng(state)
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert expected[0] == got[0] and expected[1] == got[1] and torch.equal(expected[2], got[2])


def test_manager_keeps_last_k_and_leaves_no_temp(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (10, 20, 30):
        manager.save(step, {"step": step}, lambda d: (d / "extra.txt").write_text("x"))
    assert [p.name for p in manager.list()] == ["step_0000000020", "step_0000000030"]
    assert load_checkpoint(manager.latest())["step"] == 30  # type: ignore[arg-type]
    assert (manager.latest() / "extra.txt").read_text() == "x"  # type: ignore[operator]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_0000000020", "step_0000000030"]  # fmt: skip
    manager.save(30, {"step": 31})  # overwriting a step replaces it whole
    assert load_checkpoint(manager.latest())["step"] == 31  # type: ignore[arg-type]


def test_incomplete_checkpoints_are_ignored_and_rejected(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save(1, {"a": 1})
    partial = tmp_path / "checkpoints" / "step_0000000002"
    partial.mkdir()  # a crash before the rename never leaves this, but be robust
    assert manager.latest().name == "step_0000000001"  # type: ignore[union-attr]
    with pytest.raises(CheckpointError, match="not a worldflux checkpoint"):
        load_checkpoint(partial)
    latest = manager.latest()
    assert latest is not None
    (latest / "checksums.json").unlink()  # as a future format without this manifest might be
    (latest / TREE_FILE).write_text('{"format": 99, "tree": {}}')
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(latest)
    with pytest.raises(CheckpointError, match="keep"):
        CheckpointManager(tmp_path, keep=0)

"""kill -9 at random moments of checkpoint writes: the newest intact checkpoint always loads."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

from ckpt_helpers import add_rows, check_tree, make_replay, same_replay, tree_for

from worldflux.data import replay_chunks
from worldflux.training.checkpoint import CheckpointManager

CAPACITY = 64  # the ring wraps after 64 rows, so later saves rewrite old chunks too


def _write_forever(run: Path, step: int) -> None:
    """A writer: re-saves `step` (an overwrite), then one checkpoint per new row, until killed."""
    manager = CheckpointManager(run, keep=2)
    replay = make_replay(CAPACITY)
    add_rows(replay, 0, step)
    while True:
        manager.save(step, tree_for(step), replay=replay)
        add_rows(replay, step, step + 1)
        step += 1


def _check(path: Path, tree: dict) -> int:
    step = tree["step"]
    assert path.name == f"step_{step:010d}"
    check_tree(tree, step)
    expected = make_replay(CAPACITY)
    add_rows(expected, 0, step)
    same_replay(tree["replay"], expected)
    return step


def _kill_at_random(tmp_path: Path, kills: int) -> dict[str, int]:
    ctx = mp.get_context("fork")  # a forked writer starts in milliseconds
    step = 5
    first = CheckpointManager(tmp_path, keep=2)
    replay = make_replay(CAPACITY)
    add_rows(replay, 0, step)
    start = time.perf_counter()
    first.save(step, tree_for(step), replay=replay)
    window = 4 * (time.perf_counter() - start)  # kills land across a few whole saves
    rng, mid_write = random.Random(0), 0
    for _ in range(kills):
        proc = ctx.Process(target=_write_forever, args=(tmp_path, step), daemon=True)
        proc.start()
        time.sleep(rng.uniform(0, window))
        os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        proc.join()
        mid_write += any(p.name.startswith(".") for p in first.root.iterdir())
        _check(*CheckpointManager(tmp_path).load_latest(with_replay=True))  # a reader (eval)
        resumed = _check(*CheckpointManager(tmp_path).load_latest(with_replay=True, sweep=True))
        assert resumed >= step  # a resume never goes back past a checkpoint it already loaded
        if resumed == step:  # no save completed: on a loaded host a save can take longer
            window *= 1.25
        step = resumed
    CheckpointManager(tmp_path).sweep()
    names = [p.name for p in first.root.iterdir()]
    assert not [n for n in names if n.startswith(".")] and len(names) <= 3, names
    return {"kills": kills, "mid_write": mid_write, "last_step": step}


def test_kill9_at_50_random_moments_of_checkpoint_writes(tmp_path: Path, monkeypatch) -> None:
    """~10 s: 50 forked writers, each killed with SIGKILL after a random delay."""
    monkeypatch.setattr(replay_chunks, "CHUNK_BYTES", 256)  # 10 rows per chunk: many chunks
    stats = _kill_at_random(tmp_path, kills=50)
    assert stats["mid_write"] >= 10, stats  # most kills land while a save is in progress
    assert stats["last_step"] > 5, stats

"""Data-parallel training: 2 gloo ranks agree with each other and with one process; world-model
pretraining (offline data under data-parallel sync) through the one `Trainer`."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ddp_helpers as H
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from worldflux.core.exceptions import ConfigError
from worldflux.distributed import ddp

STEPS, GLOBAL_BATCH, WORLD = 3, 4, 2
CPU = ddp.DistContext(0, 1, 0, "none", torch.device("cpu"))  # one process, no group


@functools.cache
def _reference(steps: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[float]]:
    """The single-process run on the same global batches (cached: read-only for callers)."""
    model = H.make_model()
    opt = torch.optim.Adam(model.parameters(), lr=H.LR)
    losses = [H.reference_step(model, opt, s, GLOBAL_BATCH, WORLD) for s in range(steps)]
    return model, opt, losses


def _assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


def _check_run(out: Path) -> None:
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    _assert_same_weights(r0, r1, atol=0.0)  # one all-reduce per backward: bitwise identical
    ref_model, _, ref_losses = _reference(STEPS)
    ref = {k: v.detach() for k, v in ref_model.state_dict().items()}
    _assert_same_weights(r0, ref, atol=1e-5)
    for rank in range(WORLD):
        losses = json.loads((out / f"rank{rank}.json").read_text())["losses"]
        assert losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)


def test_two_gloo_ranks_match_single_process_and_resume_on_one(tmp_path: Path) -> None:
    from worldflux.training.checkpoint import load_checkpoint

    ckpt = tmp_path / "ckpt"
    args = (WORLD, str(tmp_path / "init"), str(tmp_path), STEPS, GLOBAL_BATCH, str(ckpt))
    _run_ranks(H.rank_worker, args, WORLD)
    _check_run(tmp_path)

    # Resume the 2-rank checkpoint on 1 rank and continue: equals an uninterrupted run.
    model = H.make_model()
    opt = torch.optim.Adam(model.parameters(), lr=H.LR)
    tree = load_checkpoint(ckpt)
    assert tree["dist"] == {"step": STEPS, "world_size": WORLD}
    model.load_state_dict(tree["model"])
    opt.load_state_dict(tree["optimizer"])
    for s in range(STEPS, STEPS + 2):
        H.reference_step(model, opt, s, GLOBAL_BATCH, WORLD)
    full, _, _ = _reference(STEPS + 2)
    _assert_same_weights(model.state_dict(), full.state_dict(), atol=1e-5)


def _saved_replay(path: Path, nan_rows: int = 0, nan_streams: int = 1) -> None:
    """2 streams of 100 rows; the first `nan_rows` observations of `nan_streams` are NaN."""
    from worldflux.data.replay import Replay
    from worldflux.envs.base import StepBatch

    obs_space, act_space = spaces_for_test()
    replay = Replay(400, obs_space, act_space, num_envs=2, seed=0)
    g = np.random.default_rng(0)
    for t in range(100):
        obs = g.standard_normal((2, H.OBS_DIM)).astype(np.float32)
        if t < nan_rows:
            obs[:nan_streams] = np.nan
        replay.add(
            StepBatch(
                obs=obs,
                action=g.uniform(-1, 1, (2, H.ACT_DIM)).astype(np.float32),
                reward=g.standard_normal(2).astype(np.float32),
                is_first=np.full(2, t % 25 == 0),
                is_terminal=np.zeros(2, bool),
                is_last=np.full(2, t % 25 == 24),
            )
        )
    replay.save(path)


def spaces_for_test():  # noqa: ANN201
    from gymnasium import spaces

    return (
        spaces.Box(-np.inf, np.inf, (H.OBS_DIM,), np.float32),
        spaces.Box(-1.0, 1.0, (H.ACT_DIM,), np.float32),
    )


def test_torchrun_pretrain_then_resume_on_one_rank(tmp_path: Path) -> None:
    """`torchrun -m worldflux train MODEL dataset=<replay>` on 2 ranks (pretraining: the
    offline source under data-parallel sync), then `worldflux resume` in one process."""
    from typer.testing import CliRunner

    from worldflux.cli import app
    from worldflux.training.logging import read_metrics

    _saved_replay(tmp_path / "replay")
    out = tmp_path / "run"
    items = H.pretrain_items(str(tmp_path / "replay"), **{"agent.batch_size": 4},
                             checkpoint_every=2, log_every=2, steps=4)  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={WORLD}", "-m", "worldflux", "train", H.MODEL_NAME,
           "--run-dir", str(out), *items]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"ranks:       {WORLD} (data-parallel)" in proc.stdout, proc.stdout

    result = CliRunner().invoke(app, ["resume", str(out), "--steps", "6"])  # 1 process
    assert result.exit_code == 0, result.output
    assert "resumed at env step 4" in result.output and "ranks:" not in result.output
    lines = read_metrics(out, "train")
    assert [x["step"] for x in lines] == [2, 4, 6]
    assert [x.get("replica_max_diff") for x in lines] == [0.0, 0.0, None]  # 2 ranks, then 1
    assert all(np.isfinite(v) for x in lines for v in x.values() if isinstance(v, float))
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1].endswith("6")


def _run_ranks(fn, args: tuple, world: int) -> None:  # noqa: ANN001
    ctx = mp.start_processes(fn, args, nprocs=world, join=False, start_method="fork")
    deadline = time.monotonic() + 120  # a hung collective fails the test instead of hanging CI
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP ranks did not finish within 120 s")


def test_nonfinite_updates_are_skipped_on_every_rank(tmp_path: Path) -> None:
    """Stream 0 starts with NaN observations: ranks that sample it get a NaN loss. Every rank
    skips those updates together, so the replicas stay identical and finite."""
    from worldflux.training.checkpoint import load_checkpoint
    from worldflux.training.logging import read_metrics

    _saved_replay(tmp_path / "replay", nan_rows=30)
    items = H.pretrain_items(str(tmp_path / "replay"), steps=12, max_nonfinite=12)
    _run_ranks(H.pretrain_rank_worker, (WORLD, str(tmp_path / "init"), items, str(tmp_path)), WORLD)
    records = [json.loads((tmp_path / f"pretrain{r}.json").read_text()) for r in range(WORLD)]
    assert [r["local_rank"] for r in records] == [WORLD - 1 - r for r in range(WORLD)]
    results = [r["result"] for r in records]
    skipped = {r["nonfinite"] for r in results}
    assert len(skipped) == 1 and 0 < skipped.pop() < 12, results  # the same count everywhere
    lines = read_metrics(tmp_path / "run", "train")
    assert [x["step"] for x in lines] == [4, 8, 12]
    assert all(x["replica_max_diff"] == 0.0 for x in lines)
    tree = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000000012")
    weights = tree["agent"]["modules"]["model"]
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())
    assert tree["counters"]["nonfinite_total"] == results[0]["nonfinite"]


def test_repeated_nonfinite_updates_stop_the_run_with_a_clear_error(tmp_path: Path) -> None:
    from worldflux.training.checkpoint import load_checkpoint
    from worldflux.training.run import build_trainer
    from worldflux.training.run_config import parse_overrides
    from worldflux.training.trainer import TrainingError

    _saved_replay(tmp_path / "replay", nan_rows=100, nan_streams=2)
    items = H.pretrain_items(str(tmp_path / "replay"), steps=10, max_nonfinite=3)
    trainer = build_trainer(parse_overrides(H.MODEL_NAME, None, items), tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.agent.model.state_dict().items()}
    with pytest.raises(TrainingError, match="3 consecutive updates had NaN/Inf") as info:
        trainer.train()
    assert "update 3" in str(info.value) and "skipped on every rank" in str(info.value)
    saved = load_checkpoint(trainer.checkpoints.latest())["agent"]["modules"]["model"]
    _assert_same_weights(saved, before, atol=0.0)  # what was saved: the last finite weights
    with pytest.raises(ConfigError, match="max_nonfinite"):
        parse_overrides(H.MODEL_NAME, None, [*items, "max_nonfinite=0"])


def test_local_rank_comes_from_local_rank_or_the_node_layout() -> None:
    assert ddp.local_rank_for(9, {"LOCAL_RANK": "1"}, device_count=8) == 1
    assert ddp.local_rank_for(9, {}, device_count=8) == 1  # rank 9 of 2 x 8 GPUs: GPU 1
    assert ddp.local_rank_for(3, {}, device_count=0) == 3  # CPU: nothing to pick
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        ddp.local_rank_for(0, {"LOCAL_RANK": "x"}, device_count=2)
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        ddp.local_rank_for(0, {"LOCAL_RANK": "-1"}, device_count=2)


def test_single_process_context_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = ddp.init_distributed(device="cpu")
    assert (ctx.world_size, ctx.distributed, ctx.is_main) == (1, False, True)
    assert ddp.all_reduce_metrics({"b": 2.0, "a": torch.tensor(1.0)}, ctx) == {"a": 1.0, "b": 2.0}


def test_torchrun_env_parsing_and_errors() -> None:
    assert ddp.torchrun_env({}) is None
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert ddp.torchrun_env(env) == (1, 4, 1)
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        ddp.torchrun_env({"RANK": "1", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="RANK"):
        ddp.torchrun_env({"RANK": "x", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match="RANK < WORLD_SIZE"):
        ddp.torchrun_env({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})


def test_batch_lr_and_seed_helpers() -> None:
    assert ddp.per_rank_batch(16, 4) == 4
    with pytest.raises(ConfigError, match="global_batch"):
        ddp.per_rank_batch(10, 4)
    assert ddp.scale_lr(1e-3, 16, 64, "linear") == pytest.approx(4e-3)
    assert ddp.scale_lr(1e-3, 16, 64, "sqrt") == pytest.approx(2e-3)
    with pytest.raises(ConfigError, match="rule"):
        ddp.scale_lr(1e-3, 16, 64, "cubic")
    seeds = {ddp.shard_seed(0, r) for r in range(64)}
    assert len(seeds) == 64 and ddp.shard_seed(0, 3) == ddp.shard_seed(0, 3)
    assert ddp.shard_seed(0, 3, epoch=1) != ddp.shard_seed(0, 3)
    with pytest.raises(ConfigError, match="metrics"):
        ddp.all_reduce_metrics({"x": torch.zeros(2)}, CPU)

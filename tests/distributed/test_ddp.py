"""Data-parallel training: 2 gloo ranks agree with each other and with one process."""

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
CPU = ddp.DistContext(0, 1, 0, "none", torch.device("cpu"))


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
    _assert_same_weights(r0, r1, atol=0.0)  # DDP: bitwise identical replicas
    ref_model, _, ref_losses = _reference(STEPS)
    ref = {k: v.detach() for k, v in ref_model.state_dict().items()}
    _assert_same_weights(r0, ref, atol=1e-5)
    for rank in range(WORLD):
        losses = json.loads((out / f"rank{rank}.json").read_text())["losses"]
        assert losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)


def test_two_gloo_ranks_match_single_process_and_resume_on_one(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    args = (WORLD, str(tmp_path / "init"), str(tmp_path), STEPS, GLOBAL_BATCH, str(ckpt))
    _run_ranks(H.rank_worker, args, WORLD)
    _check_run(tmp_path)

    # Resume the 2-rank checkpoint on 1 rank and continue: equals an uninterrupted run.
    model = H.make_model()
    opt = torch.optim.Adam(model.parameters(), lr=H.LR)
    info = ddp.load_checkpoint(ckpt, CPU, model, opt)
    assert info["step"] == STEPS and info["world_size"] == WORLD
    assert info["per_rank_batch"] == GLOBAL_BATCH
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
    """`torchrun -m worldflux.distributed.pretrain` on 2 ranks, then resumed on 1."""
    _saved_replay(tmp_path / "replay")
    out = tmp_path / "run"
    args = ["--model", H.MODEL_NAME, "--replay", str(tmp_path / "replay"), "--out", str(out)]
    args += ["--global-batch", "4", "--seq-len", "8", "--checkpoint-every", "2", "--log-every", "2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={WORLD}", "-m", "worldflux.distributed.pretrain", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        cmd + ["--steps", "4"], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["world_size"] == WORLD

    from worldflux.distributed.pretrain import main

    result = main([*args, "--steps", "6", "--device", "cpu"])  # no torchrun vars: 1 process
    assert (result["step"], result["epoch"], result["world_size"]) == (6, 1, 1)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(x["step"], x["world_size"]) for x in lines] == [(2, 2), (4, 2), (6, 1)]
    assert all(x["replica_max_diff"] == 0.0 and np.isfinite(x["loss"]) for x in lines)
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1].endswith("6")


def _run_ranks(fn, args: tuple, world: int) -> None:  # noqa: ANN001
    ctx = mp.start_processes(fn, args, nprocs=world, join=False, start_method="fork")
    deadline = time.monotonic() + 120  # a hung collective fails the test instead of hanging CI
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP ranks did not finish within 120 s")


def _pretrain_cfg(tmp_path: Path, **kw) -> dict:  # noqa: ANN003
    cfg = {"model": H.MODEL_NAME, "replay": str(tmp_path / "replay"), "out": str(tmp_path / "run"),
           "global_batch": 2, "seq_len": 8, "checkpoint_every": 0, "log_every": 4,
           "device": "cpu"}  # fmt: skip
    return {**cfg, **kw}


def test_nonfinite_updates_are_skipped_on_every_rank(tmp_path: Path) -> None:
    """Stream 0 starts with NaN observations: ranks that sample it get a NaN loss. Every rank
    skips those updates together, so the replicas stay identical and finite."""
    _saved_replay(tmp_path / "replay", nan_rows=30)
    cfg = _pretrain_cfg(tmp_path, steps=12, max_nonfinite=12)
    _run_ranks(H.pretrain_rank_worker, (WORLD, str(tmp_path / "init"), cfg, str(tmp_path)), WORLD)
    records = [json.loads((tmp_path / f"pretrain{r}.json").read_text()) for r in range(WORLD)]
    assert [r["local_rank"] for r in records] == [WORLD - 1 - r for r in range(WORLD)]
    results = [r["result"] for r in records]
    skipped = {r["nonfinite_total"] for r in results}
    assert len(skipped) == 1 and 0 < skipped.pop() < 12, results  # the same count everywhere
    assert all(r["replica_max_diff"] == 0.0 for r in results)
    from worldflux.training.checkpoint import load_checkpoint

    tree = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000000012")
    assert all(bool(torch.isfinite(v).all()) for v in tree["model"].values())
    assert tree["extra"]["nonfinite_total"] == results[0]["nonfinite_total"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [4, 8, 12] and "nonfinite_total" in lines[-1]


def test_repeated_nonfinite_updates_stop_the_run_with_a_clear_error(tmp_path: Path) -> None:
    from worldflux.distributed.pretrain import PretrainConfig, pretrain
    from worldflux.training.trainer import TrainingError

    _saved_replay(tmp_path / "replay", nan_rows=100, nan_streams=2)
    cfg = _pretrain_cfg(tmp_path, steps=10, max_nonfinite=3, global_batch=4)
    with pytest.raises(TrainingError, match="3 consecutive updates had NaN/Inf") as info:
        pretrain(PretrainConfig(**cfg), CPU)  # world_size 1: no process group
    assert "update 3" in str(info.value) and "skipped on every rank" in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing non-finite was saved
    with pytest.raises(ConfigError, match="max_nonfinite"):
        PretrainConfig(**{**cfg, "max_nonfinite": 0})


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
    module = ddp.wrap_model(H.make_model(), ctx)
    assert not isinstance(module, torch.nn.parallel.DistributedDataParallel)
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


def test_checkpoint_refuses_a_world_size_that_does_not_split_the_batch(tmp_path: Path) -> None:
    model = H.make_model()
    opt = torch.optim.Adam(model.parameters(), lr=H.LR)
    ddp.save_checkpoint(tmp_path / "c", CPU, model, opt, step=3, global_batch=6)
    four = ddp.DistContext(0, 4, 0, "none", torch.device("cpu"))  # as if 4 ranks (no group)
    with pytest.raises(ConfigError, match="multiple of world_size=4"):
        ddp.load_checkpoint(tmp_path / "c", four, H.make_model())
    three = ddp.DistContext(0, 3, 0, "none", torch.device("cpu"))
    info = ddp.load_checkpoint(tmp_path / "c", three, H.make_model())
    assert (info["step"], info["per_rank_batch"]) == (3, 2)

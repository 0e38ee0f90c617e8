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
    ctx = mp.start_processes(H.rank_worker, args, nprocs=WORLD, join=False, start_method="fork")
    deadline = time.monotonic() + 120  # a hung collective fails the test instead of hanging CI
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP ranks did not finish within 120 s")
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


def test_torchrun_launch(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={WORLD}"]
    cmd += [H.__file__, str(tmp_path), str(STEPS), str(GLOBAL_BATCH), str(ckpt)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_run(tmp_path)
    assert (ckpt / "tree.json").is_file()


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

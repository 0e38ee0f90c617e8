"""Data-parallel online training: replicas stay identical, resume is exact (also across world
sizes), gradients are rank means, and one rank is exactly the single-process Trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import online_helpers as H
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from worldflux.agents.base import guarded_step
from worldflux.core.exceptions import ConfigError
from worldflux.distributed import ddp
from worldflux.distributed.data_parallel import DataParallel
from worldflux.training.logging import read_metrics
from worldflux.training.run import build_trainer, resume_trainer
from worldflux.training.run_config import parse_overrides

WORLD = 2
CPU = ddp.DistContext(0, 1, 0, "none", torch.device("cpu"))


def _spawn(fn, args: tuple, timeout: float = 240.0) -> None:  # noqa: ANN001
    ctx = mp.start_processes(fn, args, nprocs=WORLD, join=False, start_method="fork")
    deadline = time.monotonic() + timeout  # a hung collective fails the test, not CI
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"ranks did not finish within {timeout:.0f} s")


def _weights(out: Path, tag: str) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"{tag}.safetensors"))


def _info(out: Path, tag: str) -> dict:
    return json.loads((out / f"{tag}.json").read_text())


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _evals(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["return_mean"]) for r in read_metrics(run_dir, "eval")]


@pytest.mark.parametrize("model", sorted(H.FAMILIES))
def test_two_ranks_stay_identical_and_resume_exactly(tmp_path: Path, model: str) -> None:
    """2 gloo ranks: replicas bitwise equal; stop at half + resume == one uninterrupted run."""
    job = {"model": model, "items": H.items(model), "out": str(tmp_path)}
    full = {**job, "name": "full", "run_dir": str(tmp_path / "full")}
    half = {**job, "name": "half", "run_dir": str(tmp_path / "split"), "stop_at": H.STEPS // 2}
    _spawn(H.online_worker, (WORLD, str(tmp_path / "init1"), [full, half]))
    rest = {**job, "name": "rest", "run_dir": str(tmp_path / "split"), "resume": True}
    _spawn(H.online_worker, (WORLD, str(tmp_path / "init2"), [rest]))

    a0, a1 = _weights(tmp_path, "full_rank0"), _weights(tmp_path, "full_rank1")
    _assert_equal(a0, a1)  # gradients and buffers synchronised: identical replicas
    _assert_equal(a0, _weights(tmp_path, "rest_rank0"))  # exact resume, every rank
    _assert_equal(a1, _weights(tmp_path, "rest_rank1"))
    info = _info(tmp_path, "full_rank0")
    assert info["step"] == H.STEPS and info["batch_size"] == 2  # global batch 4 over 2 ranks
    # (192 - 64 seed steps) * 0.25 updates per global env step
    assert info["updates"] == _info(tmp_path, "full_rank1")["updates"] == 32
    assert info["sync_calls"] >= info["updates"]  # at least one all-reduce per update
    # the same evaluations and the same per-rank episodes, resumed or not
    assert _evals(tmp_path / "full") == _evals(tmp_path / "split")
    assert len(_evals(tmp_path / "full")) == 2
    ep_full = read_metrics(tmp_path / "full" / "ranks" / "rank1", "episode")
    ep_split = read_metrics(tmp_path / "split" / "ranks" / "rank1", "episode")
    assert [e["return"] for e in ep_full] == [e["return"] for e in ep_split]
    assert ep_full  # rank 1 stepped its own envs
    # each rank stepped its own envs with its own seeds into its own replay shard
    assert info["replay_digest"] != _info(tmp_path, "full_rank1")["replay_digest"]
    train = read_metrics(tmp_path / "full", "train")
    assert train and all("updates" in r for r in train)
    shards = tmp_path / "full" / "checkpoints" / f"step_{H.STEPS:010d}" / "shards"
    assert (shards / "rank1" / "replay").is_dir()


def test_disk_replay_shards_on_two_ranks_resume_exactly(tmp_path: Path) -> None:
    """``replay_on_disk=true`` under 2 ranks: each rank's shard is memmapped in its own folder,
    a split run resumes to the same weights and rows, and both equal the in-RAM run."""
    model = "tdmpc2:debug"
    job = {"model": model, "out": str(tmp_path)}
    disk = [*H.items(model), "replay_on_disk=true"]
    full = {**job, "items": disk, "name": "full", "run_dir": str(tmp_path / "full")}
    ram = {**job, "items": H.items(model), "name": "ram", "run_dir": str(tmp_path / "ram")}
    half = {**job, "items": disk, "name": "half", "run_dir": str(tmp_path / "split"),
            "stop_at": H.STEPS // 2}  # fmt: skip
    _spawn(H.online_worker, (WORLD, str(tmp_path / "init1"), [full, ram, half]))
    rest = {**job, "name": "rest", "run_dir": str(tmp_path / "split"), "resume": True}
    _spawn(H.online_worker, (WORLD, str(tmp_path / "init2"), [rest]))

    homes = [tmp_path / "split" / "replay", tmp_path / "split" / "ranks" / "rank1" / "replay"]
    for rank, home in enumerate(homes):
        info = _info(tmp_path, f"rest_rank{rank}")
        assert info["replay_dir"] == str(home) and (home / "action.npy").is_file()
        assert _info(tmp_path, f"ram_rank{rank}")["replay_dir"] is None
        for other in ("full", "ram"):
            assert _info(tmp_path, f"{other}_rank{rank}")["replay_digest"] == info["replay_digest"]
            _assert_equal(
                _weights(tmp_path, f"{other}_rank{rank}"), _weights(tmp_path, f"rest_rank{rank}")
            )
    assert (
        _info(tmp_path, "rest_rank0")["replay_digest"]
        != _info(tmp_path, "rest_rank1")["replay_digest"]
    )


def test_a_late_rank_accepts_a_new_disk_replay_run_dir(tmp_path: Path) -> None:
    """Rank 0 creates its memmapped replay shard in the run dir while it builds; rank 1, 2 s
    later, used to find the dir no longer empty and refuse the new run. Every rank now checks
    the run dir before any rank writes into it."""
    model = "tdmpc2:debug"
    late = {
        "model": model, "out": str(tmp_path), "name": "late", "run_dir": str(tmp_path / "run"),
        "items": [*H.items(model), "replay_on_disk=true"], "stop_at": 8, "late": 2.0,
    }  # fmt: skip
    _spawn(H.online_worker, (WORLD, str(tmp_path / "init"), [late]))
    assert [_info(tmp_path, f"late_rank{r}")["step"] for r in range(WORLD)] == [8, 8]


def test_resume_on_another_world_size(tmp_path: Path) -> None:
    """2 ranks -> 1 (rank 1's shard dropped, with a warning); 1 rank -> 2 (rank 1 refills)."""
    model = "dreamerv3:debug"
    job = {"model": model, "items": H.items(model), "out": str(tmp_path)}
    two = {**job, "name": "two", "run_dir": str(tmp_path / "two")}
    one_dir = tmp_path / "one"
    spec = parse_overrides(model, H.FAMILIES[model][0], H.items(model, steps=96))
    build_trainer(spec, one_dir, distributed=CPU).train()
    grow = {**job, "name": "grow", "run_dir": str(one_dir), "resume": True,
            "changes": {"steps": H.STEPS}}  # fmt: skip
    _spawn(H.online_worker, (WORLD, str(tmp_path / "init"), [two, grow]))

    g0, g1 = _weights(tmp_path, "grow_rank0"), _weights(tmp_path, "grow_rank1")
    _assert_equal(g0, g1)
    i0, i1 = _info(tmp_path, "grow_rank0"), _info(tmp_path, "grow_rank1")
    assert i0["step"] == i1["step"] == H.STEPS
    assert i0["updates"] == i1["updates"]
    # rank 1 had no shard: every rank paused updates until it refilled seed_steps
    assert i0["learn_from"] == i1["learn_from"] == 96 + 64

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shrunk = resume_trainer(tmp_path / "two", distributed=CPU, steps=H.STEPS + 64)
    assert any("ranks 1..1 are dropped" in str(w.message) for w in caught)
    assert shrunk.agent.batch_size == 4  # the whole global batch on one rank
    assert shrunk.train()["step"] == H.STEPS + 64
    # the checkpoint is also an ordinary single-process one (rank 0's view)
    plain = resume_trainer(tmp_path / "two", steps=H.STEPS + 64, progress=False)
    assert plain.step == H.STEPS + 64  # the checkpoint written by the run above


def test_one_rank_is_exactly_the_single_process_trainer(tmp_path: Path) -> None:
    spec = parse_overrides("dreamerv3:debug", "CartPole-v1", H.items("dreamerv3:debug", 128))
    single = build_trainer(spec, tmp_path / "single")
    single.train()
    dp = build_trainer(spec, tmp_path / "dp", distributed=CPU)
    assert isinstance(dp.sync, DataParallel)
    dp.train()
    _assert_equal(H.agent_weights(single.agent), H.agent_weights(dp.agent))
    assert _evals(tmp_path / "single") == _evals(tmp_path / "dp")
    assert dp.sync.reducer.calls == 0  # no process group: nothing is communicated


def test_gradients_are_rank_means_and_a_nan_on_one_rank_skips_every_rank(
    tmp_path: Path,
) -> None:
    _spawn(H.grad_sync_worker, (WORLD, str(tmp_path / "init"), str(tmp_path)))
    r0, r1 = (
        json.loads((tmp_path / "grad0.json").read_text()),
        json.loads((tmp_path / "grad1.json").read_text()),
    )
    w0, w1 = (
        load_file(str(tmp_path / "grad0.safetensors")),
        load_file(str(tmp_path / "grad1.safetensors")),
    )
    # the single-process step on the whole batch: mean of the two halves' losses
    model, opt = H.grad_model()
    x, y = H.grad_batch()
    loss = (H.grad_loss(model, x[:4], y[:4], 0) + H.grad_loss(model, x[4:], y[4:], 1)) / 2
    stepped, grad_norm = guarded_step(loss, opt, model.parameters(), 0.5)
    norm = float(grad_norm)
    assert stepped and norm > 0.5  # clipping is active, and applied to the rank-mean gradient
    for r in (r0, r1):
        assert r["step1"][0] is True and r["step1"][1] == pytest.approx(norm, rel=1e-6)
        assert r["step2"][0] is False  # rank 1's loss was NaN: skipped on both ranks
        assert r["unchanged"] is True
        assert r["stat"] == pytest.approx(1.5)  # buffers averaged: (1 + 2) / 2
        assert r["calls"] == 2
    ref = {k: v for k, v in model.state_dict().items() if k != "stat"}
    for k, v in ref.items():
        assert torch.equal(w0[k], w1[k]), k
        torch.testing.assert_close(w0[k], v, atol=1e-6, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


def test_batch_and_device_mismatches_are_clear_errors(tmp_path: Path) -> None:
    spec = parse_overrides("dreamerv3:debug", "CartPole-v1", H.items("dreamerv3:debug"))
    three = ddp.DistContext(0, 3, 0, "gloo", torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"agent.batch_size: .* multiple of 3; got 4"):
        build_trainer(spec, tmp_path / "a", distributed=three)
    cuda = ddp.DistContext(0, 1, 0, "none", torch.device("cuda", 0))
    with pytest.raises(ConfigError, match=r"device: the process group runs on cuda"):
        build_trainer(spec, tmp_path / "b", distributed=cuda)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_train_on_two_ranks_then_resume_under_torchrun_with_more_steps(tmp_path: Path) -> None:
    """`worldflux train --nproc 2` (which starts torchrun), then `torchrun -m worldflux resume`:
    the same command line code on every rank."""
    run_dir = tmp_path / "run"
    worldflux = [sys.executable, "-m", "worldflux"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "worldflux"]  # fmt: skip
    train = ["train", "dreamerv3:debug", "--env", "CartPole-v1", "--run-dir", str(run_dir),
             "--nproc", "2", *H.items("dreamerv3:debug", 128)]  # fmt: skip
    resume = ["resume", str(run_dir), "--steps", "192"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for steps, cmd in ((128, worldflux + train), (192, torchrun + resume)):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"env steps:   {steps}" in done.stdout, done.stdout
        assert "ranks:       2 (data-parallel)" in done.stdout
        assert done.stdout.count("run dir:") == 1  # rank 0 reports
    assert json.loads((run_dir / "run.json").read_text())["trainer"]["steps"] == 192
    assert [s for s, _ in _evals(run_dir)] == [96, 192]
    assert (run_dir / "checkpoints" / f"step_{192:010d}" / "shards" / "rank1").is_dir()

"""Shared pieces of the DDP tests: the model under test, a seeded global batch, one train step.

The rank workers live here (not in the test module) so `torch.multiprocessing` and `torchrun`
children can import them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from safetensors.torch import save_file

from worldflux.core.batch import Batch
from worldflux.distributed import ddp

OBS_DIM, ACT_DIM, SEQ = 5, 2, 6
LR = 3e-3


def make_model() -> torch.nn.Module:
    """The real debug model named by MODEL_NAME (DreamerV3's samples, so the loss is random)."""
    import worldflux

    obs = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    act = spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
    return worldflux.create_world_model(MODEL_NAME, obs, act, seed=0)


MODEL_NAME = os.environ.get("WF_DDP_TEST_MODEL", "dreamerv3:debug")


def global_batch(step: int, size: int) -> Batch:
    """A seeded (size, SEQ) batch; the same for every rank and world size."""
    g = torch.Generator().manual_seed(1000 + step)
    is_first = torch.zeros(size, SEQ, dtype=torch.bool)
    is_first[:, 0] = True
    action = torch.rand(size, SEQ, ACT_DIM, generator=g) * 2 - 1
    action[:, 0] = 0.0
    return Batch(
        obs=torch.randn(size, SEQ, OBS_DIM, generator=g),
        action=action,
        reward=torch.randn(size, SEQ, generator=g),
        is_first=is_first,
        is_terminal=torch.zeros(size, SEQ, dtype=torch.bool),
        is_last=torch.zeros(size, SEQ, dtype=torch.bool),
    )


def shard_seed_for(step: int, rank: int) -> int:
    return ddp.shard_seed(7, rank, step)


def shard_batch(batch: Batch, rank: int, world: int) -> Batch:
    """Rank `rank`'s contiguous slice of a global `batch` along B."""
    b = ddp.per_rank_batch(batch.shape[0], world)
    lo, hi = rank * b, (rank + 1) * b
    return Batch(
        obs=batch.obs[lo:hi],
        action=batch.action[lo:hi],
        reward=batch.reward[lo:hi],
        is_first=batch.is_first[lo:hi],
        is_terminal=batch.is_terminal[lo:hi],
        is_last=batch.is_last[lo:hi],
    )


def train_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    ctx: ddp.DistContext,
    step: int,
    size: int,
) -> float:
    """One data-parallel step on this rank's shard, gradients averaged by the one sync
    mechanism (`gradsync` + `GradientAllReduce`); returns the rank-mean loss."""
    from worldflux.distributed.gradsync import sync_gradients

    shard = shard_batch(global_batch(step, size), ctx.rank, ctx.world_size)
    torch.manual_seed(shard_seed_for(step, ctx.rank))  # the loss may sample
    loss, _ = model.loss(shard)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    sync_gradients([p for p in model.parameters() if p.requires_grad])
    opt.step()
    return ddp.all_reduce_metrics({"loss": loss.detach()}, ctx)["loss"]


def reference_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, size: int, shards: int
) -> float:
    """The single-process equivalent: the global batch as `shards` micro-batches, averaged."""
    batch = global_batch(step, size)
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for r in range(shards):
        torch.manual_seed(shard_seed_for(step, r))
        loss, _ = model.loss(shard_batch(batch, r, shards))
        (loss / shards).backward()
        total += float(loss.detach()) / shards
    opt.step()
    return total


def rank_worker(
    rank: int, world: int, init_file: str, out: str, steps: int, size: int, ckpt: str
) -> None:
    """Body of one rank: `steps` updates, a rank-0 checkpoint, this rank's weights saved."""
    torch.set_num_threads(1)
    ctx = ddp.init_distributed(
        device="cpu", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        run_rank(ctx, Path(out), steps, size, Path(ckpt))
    finally:
        ddp.shutdown(ctx)


def run_rank(ctx: ddp.DistContext, out: Path, steps: int, size: int, ckpt: Path) -> None:
    from worldflux.distributed.data_parallel import GradientAllReduce, broadcast_modules
    from worldflux.distributed.gradsync import gradient_sync
    from worldflux.training.checkpoint import save_checkpoint

    model = make_model()
    broadcast_modules([model], ctx)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    with gradient_sync(GradientAllReduce(ctx)):
        losses = [train_step(model, opt, ctx, s, size) for s in range(steps)]
    if ctx.is_main:
        tree = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                "dist": {"step": steps, "world_size": ctx.world_size}}  # fmt: skip
        save_checkpoint(ckpt, tree)
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out / f"rank{ctx.rank}.safetensors"))
    (out / f"rank{ctx.rank}.json").write_text(json.dumps({"losses": losses, "ws": ctx.world_size}))


def pretrain_items(replay: str, **settings: object) -> list[str]:
    """``worldflux train`` items of a world-model pretraining run on the saved `replay`."""
    base = {"dataset": replay, "agent.batch_size": 2, "agent.seq_len": 8, "eval_every": 0,
            "checkpoint_every": 1000, "log_every": 4, "progress": "false",
            "tensorboard": "false", **settings}  # fmt: skip
    return [f"{k}={v}" for k, v in base.items()]


def pretrain_rank_worker(rank: int, world: int, init_file: str, items: list, out: str) -> None:
    """One rank of a pretraining run (offline data under data-parallel sync), started without
    torchrun (explicit rank).

    LOCAL_RANK is set to something other than the rank, as on a second node, to check that
    `init_distributed` takes it. Writes ``pretrain{rank}.json`` (result or error).
    """
    from worldflux.training.run import build_trainer
    from worldflux.training.run_config import parse_overrides
    from worldflux.training.trainer import TrainingError

    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(world - 1 - rank)
    ctx = ddp.init_distributed(
        device="cpu", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    record: dict = {"local_rank": ctx.local_rank}
    try:
        trainer = build_trainer(
            parse_overrides(MODEL_NAME, None, items), Path(out) / "run", distributed=ctx
        )
        result = trainer.train()
        record["result"] = {k: result[k] for k in ("step", "updates", "nonfinite")}
    except TrainingError as e:
        record["error"] = str(e)
    finally:
        ddp.shutdown(ctx)
    (Path(out) / f"pretrain{rank}.json").write_text(json.dumps(record))

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


def train_step(
    module: torch.nn.Module,
    opt: torch.optim.Optimizer,
    ctx: ddp.DistContext,
    step: int,
    size: int,
) -> float:
    """One DDP step on this rank's shard; returns the rank-mean loss (all ranks agree)."""
    shard = ddp.shard_batch(global_batch(step, size), ctx)
    torch.manual_seed(shard_seed_for(step, ctx.rank))  # the loss may sample
    loss, _ = module(shard)
    opt.zero_grad(set_to_none=True)
    loss.backward()
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
        ctx = ddp.DistContext(r, shards, r, "none", torch.device("cpu"))
        torch.manual_seed(shard_seed_for(step, r))
        loss, _ = model.loss(ddp.shard_batch(batch, ctx))
        (loss / shards).backward()
        total += float(loss.detach()) / shards
    opt.step()
    return total


def rank_worker(
    rank: int, world: int, init_file: str, out: str, steps: int, size: int, ckpt: str
) -> None:
    """Body of one rank: `steps` DDP updates, a rank-0 checkpoint, this rank's weights saved."""
    torch.set_num_threads(1)
    ctx = ddp.init_distributed(
        device="cpu", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        run_rank(ctx, Path(out), steps, size, Path(ckpt))
    finally:
        ddp.shutdown(ctx)


def run_rank(ctx: ddp.DistContext, out: Path, steps: int, size: int, ckpt: Path) -> None:
    model = make_model()
    module = ddp.wrap_model(model, ctx)
    opt = torch.optim.Adam(module.parameters(), lr=LR)
    losses = [train_step(module, opt, ctx, s, size) for s in range(steps)]
    ddp.save_checkpoint(ckpt, ctx, module, opt, steps, size)
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out / f"rank{ctx.rank}.safetensors"))
    (out / f"rank{ctx.rank}.json").write_text(json.dumps({"losses": losses, "ws": ctx.world_size}))


def pretrain_rank_worker(rank: int, world: int, init_file: str, cfg: dict, out: str) -> None:
    """One rank of `worldflux.distributed.pretrain`, started without torchrun (explicit rank).

    LOCAL_RANK is set to something other than the rank, as on a second node, to check that
    `init_distributed` takes it. Writes ``pretrain{rank}.json`` (result or error).
    """
    from worldflux.distributed.pretrain import PretrainConfig, pretrain
    from worldflux.training.trainer import TrainingError

    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(world - 1 - rank)
    ctx = ddp.init_distributed(
        device="cpu", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    record: dict = {"local_rank": ctx.local_rank}
    try:
        record["result"] = pretrain(PretrainConfig(**cfg), ctx)
    except TrainingError as e:
        record["error"] = str(e)
    finally:
        ddp.shutdown(ctx)
    (Path(out) / f"pretrain{rank}.json").write_text(json.dumps(record))

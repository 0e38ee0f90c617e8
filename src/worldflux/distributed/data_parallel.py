"""`DataParallel`: the `Trainer`'s sync strategy over ``torch.distributed`` (see
`worldflux.training.sync` for the contract; `LocalSync` is the single-process one).

Every rank trains a replica of the agent on its own data: its own envs into its own replay
shard (online), its own collectors, or its own draws from the offline data (pretraining).

- Gradients: `GradientAllReduce`, installed through `worldflux.distributed.gradsync` while the
  trainer runs, averages every update's gradients in one flat all-reduce right after backward,
  before clipping, the NaN/Inf check and the optimizer step, so a step skipped on one rank is
  skipped on all and the replicas stay bitwise identical. Floating-point buffers (DreamerV3's
  return-percentile EMA, TD-MPC2's Q scale) are averaged after each update. Losses built from
  batch statistics (JEPA's SIGReg and VICReg) see only the rank's part of the batch, as
  BatchNorm does under DDP without SyncBatchNorm.
- Seeds: rank 0 keeps the run's seed (a world of one is exactly the single-process run), rank
  r > 0 uses ``ddp.shard_seed(seed, r)``. Weights start as rank 0's on every rank.
- Logs: rank 0 evaluates and writes metrics (train metrics are rank means, plus
  ``replica_max_diff``, 0.0 while the replicas agree) and checkpoints.
- Checkpoints: a normal single-process checkpoint (rank 0's view: ``worldflux eval``,
  ``imagine`` and a single-process resume read it) plus ``shards/rank<r>/``, each other rank's
  stream state and replay (its chunks hard-linked with the previous checkpoint's shard, like
  rank 0's replay). Resuming on the same world size is exact; a rank without a shard starts
  fresh streams from ``shard_seed(seed, rank, epoch=1 + step)``; shards beyond the new world
  size are dropped with a warning.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from worldflux.distributed import ddp
from worldflux.distributed.gradsync import gradient_sync
from worldflux.training.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    save_checkpoint,
)
from worldflux.training.sync import TreeFn

SHARDS = "shards"


class DataParallel:
    """One rank of a data-parallel run (see the module docstring); `ctx` from
    `ddp.init_distributed`. A single-process `ctx` communicates nothing."""

    def __init__(self, ctx: ddp.DistContext) -> None:
        self.ctx = ctx
        self.rank, self.world_size = ctx.rank, ctx.world_size
        self.reducer = GradientAllReduce(ctx)
        self._modules: list[nn.Module] = []

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    def stream_seed(self, seed: int, epoch: int = 0) -> int:
        """Rank 0 keeps `seed`; every other rank (and any fresh start) gets a shard seed."""
        return seed if self.rank == 0 and epoch == 0 else ddp.shard_seed(seed, self.rank, epoch)

    def start(self, agent: Any) -> None:
        self._modules = list(agent.modules().values())
        broadcast_modules(self._modules, self.ctx)  # every replica starts equal

    def active(self) -> contextlib.AbstractContextManager[None]:
        return gradient_sync(self.reducer)

    def after_update(self, agent: Any) -> None:
        average_buffers(list(agent.modules().values()), self.ctx)

    def reduce_metrics(self, metrics: dict[str, Any]) -> dict[str, Any] | None:
        scalars = {  # metrics stay on the device until here (agents return 0-d tensors)
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) or (isinstance(v, torch.Tensor) and v.numel() == 1)
        }
        reduced = ddp.all_reduce_metrics(scalars, self.ctx)  # the same keys on every rank
        if self.ctx.distributed:
            reduced["replica_max_diff"] = ddp.replica_max_diff(self._modules, self.ctx)
        return reduced if self.is_main else None

    def any(self, flag: bool) -> bool:
        return ddp.any_rank(flag, self.ctx)

    def max(self, value: float) -> float:
        if not self.ctx.distributed:
            return value
        flat = torch.tensor([float(value)], dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(flat, op=dist.ReduceOp.MAX)
        return float(flat.item())

    def barrier(self) -> None:
        if self.ctx.distributed:
            dist.barrier()

    # --- checkpoints ----------------------------------------------------------------------------

    def save(
        self, manager: CheckpointManager, step: int, tree: TreeFn, stream: TreeFn, replay: Any
    ) -> Path:
        """Every rank r > 0 writes its shard into a staging folder; rank 0 writes the
        checkpoint and moves the shards into it before the atomic rename. -> the path."""
        path = manager.path_for(step)
        staging = path.parent / f".{path.name}.shards"
        if self.is_main and staging.exists():
            shutil.rmtree(staging)  # left by a run that died while saving
        self.barrier()
        if not self.is_main:
            mine = f"rank{self.rank}"
            earlier = [p / SHARDS / mine for p in manager.list()[::-1]]
            save_checkpoint(staging / mine, stream(), replay=replay, share_with=earlier)
        self.barrier()
        if self.is_main:

            def move_shards(tmp: Path) -> None:
                if staging.exists():
                    staging.rename(tmp / SHARDS)

            manager.save(step, tree(), move_shards, replay=replay)
        self.barrier()
        return path

    def load(
        self, manager: CheckpointManager, path: Path | None
    ) -> tuple[Path, dict[str, Any], dict[str, Any] | None]:
        """Rank 0 picks the checkpoint (the newest intact one unless `path` is given) and every
        rank reads it; rank r > 0 also reads ``shards/rank<r>`` (None when there is none)."""
        tree: dict[str, Any] | None = None
        step = -1
        if self.is_main:
            try:
                if path is None:
                    path, tree = manager.load_latest(with_replay=True, sweep=True)
                else:
                    tree = load_checkpoint(path, with_replay=True, replay_dir=manager.replay_dir)
                step = int(tree["counters"]["step"])
            finally:
                self._agree_step(step)  # -1 tells the other ranks that loading failed
        else:
            step = self._agree_step(-1)
            if step < 0:
                raise CheckpointError(
                    "resume: rank 0 could not load the checkpoint (see its error)"
                )
            path = manager.path_for(step) if path is None else path
            tree = load_checkpoint(path)
        assert path is not None and tree is not None
        if self.is_main:
            return path, tree, tree
        shard = path / SHARDS / f"rank{self.rank}"
        if not shard.is_dir():
            return path, tree, None
        return path, tree, load_checkpoint(shard, with_replay=True, replay_dir=manager.replay_dir)

    def _agree_step(self, step: int) -> int:
        if not self.ctx.distributed:
            return step
        value = torch.tensor([step], dtype=torch.int64, device=self.ctx.device)
        dist.broadcast(value, src=0)
        return int(value.item())

    def resumed(self, path: Path) -> None:
        saved = 1 + max((int(d.name[4:]) for d in (path / SHARDS).glob("rank*")), default=0)
        if self.is_main and saved > self.world_size:
            warnings.warn(
                f"resume: the checkpoint was written by {saved} ranks; the replay shards and "
                f"envs of ranks {self.world_size}..{saved - 1} are dropped",
                stacklevel=3,
            )


class GradientAllReduce:
    """Rank-mean gradients in one flat all-reduce per call (installed by `DataParallel`).

    The flat buffer holds every gradient (zeros where a parameter has none), one has-gradient
    flag per parameter and a poison flag. Afterwards a parameter has a gradient when any rank
    had one (the mean over all ranks, counting the others as zeros, as DDP does for unused
    parameters); when any rank was poisoned (its loss was NaN/Inf) every gradient is NaN on
    every rank, so the finiteness check skips the step everywhere (a `torch.where` on the
    summed flag, never read on the host; which parameters have gradients is read). Every rank
    must call it with the same parameters in the same order, which the shared update code
    guarantees.
    """

    def __init__(self, ctx: ddp.DistContext) -> None:
        self.ctx = ctx
        self.calls = 0  # all-reduces issued (one per backward)
        self.seconds = 0.0  # wall time spent in them (packing, all-reduce, unpacking)

    def __call__(self, params: Sequence[Tensor], poisoned: Tensor | bool) -> None:
        if not self.ctx.distributed or not params:
            return
        t0 = time.perf_counter()
        try:
            self._reduce(params, poisoned)
        finally:
            self.seconds += time.perf_counter() - t0

    def _reduce(self, params: Sequence[Tensor], poisoned: Tensor | bool) -> None:
        dev = params[0].device
        grads = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
            for p in params
        ]
        flags = [0.0 if p.grad is None else 1.0 for p in params]
        poison = torch.as_tensor(poisoned, device=dev).float().reshape(1)
        flat = torch.cat([*grads, torch.tensor(flags, device=dev), poison])  # (sum numel + n + 1,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        self.calls += 1
        n_grad = flat.numel() - len(params) - 1
        has_grad = flat[n_grad:-1].cpu().tolist()  # which parameters have a gradient: structure
        # some rank's loss was not finite: NaN gradients on every rank, so every rank skips
        mean = torch.where(flat[-1] > 0, float("nan"), flat[:n_grad] / self.ctx.world_size)
        offset = 0
        for p, seen in zip(params, has_grad, strict=True):
            n = p.numel()
            if seen > 0:
                chunk = mean[offset : offset + n].view_as(p)
                p.grad = chunk if p.dtype == chunk.dtype else chunk.to(p.dtype)
            else:
                p.grad = None
            offset += n


def average_buffers(modules: Sequence[nn.Module], ctx: ddp.DistContext) -> None:
    """Replace every floating-point persistent buffer by its rank mean (one all-reduce).

    Buffers such as DreamerV3's return-percentile EMA and TD-MPC2's Q scale are updated from
    each rank's own batch; the mean of the ranks' EMAs is the EMA of the rank-mean percentiles
    (the update is linear), so replicas stay identical. Constant buffers are unchanged.
    """
    if not ctx.distributed:
        return
    bufs = [
        b
        for m in modules
        for name, b in m.named_buffers()
        if b.is_floating_point() and _persistent(m, name)
    ]
    if not bufs:
        return
    flat = torch.cat([b.detach().reshape(-1).double() for b in bufs])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    with torch.no_grad():
        for b in bufs:
            n = b.numel()
            b.copy_(flat[offset : offset + n].view_as(b))
            offset += n


def _persistent(module: nn.Module, dotted: str) -> bool:
    *path, leaf = dotted.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    return leaf not in owner._non_persistent_buffers_set


def broadcast_modules(modules: Sequence[nn.Module], ctx: ddp.DistContext, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into every rank's modules (start equal)."""
    if not ctx.distributed:
        return
    with torch.no_grad():
        for m in modules:
            for t in [*m.parameters(), *m.buffers()]:
                dist.broadcast(t.data, src=src)

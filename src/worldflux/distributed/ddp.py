"""Data-parallel training on `torch.distributed`: init, DDP wrap, metric reduction, checkpoints.

Launch with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``); `init_distributed` reads them. Without them, and without an explicit
`world_size`, it returns a single-process context and creates no process group, so one-process
training pays for nothing here. gloo is used on CPU and NCCL on CUDA.

Every rank holds the full model; DDP averages gradients, so with ``B`` samples per rank the update
equals a single-process update on the global batch of ``B * world_size`` (same loss scale, since
each rank's loss is a mean). See docs/distributed.md for how batch size and learning rate scale.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from worldflux.core.batch import Batch
from worldflux.core.exceptions import ConfigError
from worldflux.core.model import WorldModel

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size, local rank, backend and its device."""

    rank: int  # global rank in [0, world_size)
    world_size: int  # number of processes (1 means no process group)
    local_rank: int  # rank on this node; picks the CUDA device
    backend: str  # "gloo", "nccl" or "none" when single-process
    device: torch.device  # where this rank's model and batches live

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes checkpoints and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is active (world_size > 1)."""
        return self.backend != "none"


def _env_int(environ: Mapping[str, str], name: str) -> int:
    raw = environ[name]
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}: expected an int, got {raw!r}") from None


def torchrun_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun's variables, or None when they are unset."""
    environ = os.environ if environ is None else environ
    present = [v for v in _TORCHRUN_VARS if v in environ]
    if not present:
        return None
    if len(present) != len(_TORCHRUN_VARS):
        missing = sorted(set(_TORCHRUN_VARS) - set(present))
        raise ConfigError(f"torchrun environment: {present} are set but {missing} are missing")
    rank, world, local = (_env_int(environ, v) for v in _TORCHRUN_VARS)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(
            f"torchrun environment: expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, got "
            f"RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}"
        )
    return rank, world, local


def local_rank_for(
    rank: int, environ: Mapping[str, str] | None = None, device_count: int | None = None
) -> int:
    """This process's rank on its node, for ranks started without torchrun's full set of vars.

    ``LOCAL_RANK`` when it is set (torchrun, SLURM wrappers); otherwise ``rank % device_count``
    (ranks placed node by node, one per GPU), or `rank` itself when there are no GPUs (on CPU
    it picks nothing). The global rank alone is wrong on multi-node runs: rank 9 of 2 x 8 GPUs
    is GPU 1 of its node.
    """
    environ = os.environ if environ is None else environ
    if "LOCAL_RANK" in environ:
        local = _env_int(environ, "LOCAL_RANK")
        if local < 0:
            raise ConfigError(f"environment variable LOCAL_RANK: expected an int >= 0, got {local}")
        return local
    count = torch.cuda.device_count() if device_count is None else device_count
    return rank % count if count > 0 else rank


def pick_backend(device: str | None = None) -> tuple[str, str]:
    """(backend, device type): NCCL on CUDA, gloo on CPU. `device` is "cpu", "cuda" or None."""
    if device not in (None, "cpu", "cuda"):
        raise ConfigError(f"device: expected 'cpu', 'cuda' or None, got {device!r}")
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was requested but torch.cuda.is_available() is False")
    return ("nccl", "cuda") if use_cuda else ("gloo", "cpu")


def init_distributed(
    device: str | None = None,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    timeout_s: float = 300.0,
) -> DistContext:
    """Join the process group described by torchrun's variables (or by the explicit arguments).

    `init_method` defaults to ``env://`` (torchrun); pass ``file:///tmp/x`` with `rank` and
    `world_size` to start ranks yourself (e.g. with `torch.multiprocessing`); the local rank
    then comes from `local_rank_for` (``LOCAL_RANK``, else ``rank % cuda device count``).
    """
    from_env = torchrun_env() if rank is None and world_size is None else None
    if from_env is not None:
        rank, world_size, local_rank = from_env
    else:  # explicit rank / world size: only LOCAL_RANK (if any) is read from the environment
        local_rank = local_rank_for(rank or 0)
    backend, dev_type = pick_backend(device)
    if world_size is None or world_size == 1:
        return DistContext(0, 1, 0, "none", torch.device(dev_type))
    if rank is None or not 0 <= rank < world_size:
        raise ConfigError(f"rank: expected an int in [0, {world_size}), got {rank}")
    dev = torch.device(dev_type, local_rank) if dev_type == "cuda" else torch.device("cpu")
    if dev_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank}: this node has {torch.cuda.device_count()} CUDA "
                f"devices; set LOCAL_RANK (or CUDA_VISIBLE_DEVICES) per process"
            )
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            init_method=init_method or "env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistContext(rank, world_size, local_rank, backend, dev)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (no-op for a single-process context)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


class LossModule(nn.Module):
    """Routes `forward(batch)` to `model.loss(batch)`, so DDP sees the call and syncs gradients.

    DDP only hooks `forward`; calling `ddp.module.loss` directly would skip the all-reduce.
    """

    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Any]]:
        return self.model.loss(batch)


def wrap_model(
    model: WorldModel, ctx: DistContext, find_unused_parameters: bool = True
) -> nn.Module:
    """A module whose `forward(batch)` returns `model.loss(batch)`, wrapped in DDP when needed.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts equal.
    `find_unused_parameters` is on by default because world models carry parameters that
    `loss` does not touch (DreamerV3's actor and critic); turn it off for a slightly cheaper
    backward when every parameter gets a gradient.
    """
    module = LossModule(model.to(ctx.device))
    if not ctx.distributed:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        module, device_ids=ids, find_unused_parameters=find_unused_parameters
    )


def all_reduce_metrics(metrics: Mapping[str, Tensor | float], ctx: DistContext) -> dict[str, float]:
    """Mean of each scalar metric over ranks, in one all-reduce. Every rank gets the same dict.

    All ranks must pass the same keys; they are sent in sorted order.
    """
    keys = sorted(metrics)
    values = []
    for k in keys:
        v = metrics[k]
        if isinstance(v, Tensor) and v.numel() != 1:
            raise ConfigError(f"metrics[{k!r}]: expected a scalar, got shape {tuple(v.shape)}")
        values.append(float(v))
    if not ctx.distributed or not keys:
        return dict(zip(keys, values, strict=True))
    flat = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    return dict(zip(keys, flat.cpu().tolist(), strict=True))


def replica_max_diff(module: nn.Module, ctx: DistContext) -> float:
    """Largest |parameter - rank 0's parameter| over every rank: 0.0 when replicas agree.

    A diagnostic (one broadcast of all parameters): DDP keeps replicas equal unless ranks
    apply different updates, e.g. an optimizer step skipped on one rank only.
    """
    if not ctx.distributed:
        return 0.0
    flat = torch.cat([p.detach().float().reshape(-1) for p in unwrap(module).parameters()])  # (P,)
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    worst = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst.item())


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """Samples each rank draws so that the ranks together make `global_batch`."""
    if world_size < 1:
        raise ConfigError(f"world_size: expected an int >= 1, got {world_size}")
    if global_batch < world_size or global_batch % world_size:
        raise ConfigError(
            f"global_batch: expected a multiple of world_size={world_size}, got {global_batch}"
        )
    return global_batch // world_size


def scale_lr(base_lr: float, base_batch: int, global_batch: int, rule: str = "linear") -> float:
    """Learning rate for `global_batch`, given `base_lr` tuned at `base_batch`.

    ``linear`` (Goyal et al. 2017) for SGD-like regimes, ``sqrt`` (Krizhevsky 2014; Hoffer et al.
    2017) which tends to suit Adam, ``none`` to keep `base_lr`.
    """
    if rule not in ("linear", "sqrt", "none"):
        raise ConfigError(f"rule: expected 'linear', 'sqrt' or 'none', got {rule!r}")
    if base_batch < 1 or global_batch < 1:
        raise ConfigError(f"batch sizes must be >= 1, got base={base_batch} global={global_batch}")
    ratio = global_batch / base_batch
    return base_lr * {"linear": ratio, "sqrt": ratio**0.5, "none": 1.0}[rule]


def shard_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """Independent 63-bit seed for rank `rank`'s replay shard / sampler in `epoch` (resume count).

    Derived with numpy's SeedSequence, so ranks never share a stream and the same (seed, rank,
    epoch) always gives the same seed, whatever the world size.
    """
    if seed < 0 or rank < 0 or epoch < 0:
        raise ConfigError(f"seed, rank, epoch: expected ints >= 0, got {seed}, {rank}, {epoch}")
    state = np.random.SeedSequence([seed, rank, epoch]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DDP and/or `LossModule` wrapper."""
    if isinstance(module, nn.parallel.DistributedDataParallel):
        module = module.module
    return module.model if isinstance(module, LossModule) else module


def save_checkpoint(
    path: str | Path,
    ctx: DistContext,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    global_batch: int,
    extra: dict[str, Any] | None = None,
) -> Path | None:
    """Rank 0 writes model, optimizer and run counters (safetensors + JSON); all ranks wait.

    Returns the path on rank 0, None elsewhere. Weights are the same on every rank, so nothing
    rank-specific is stored: the run can resume on any world size that divides `global_batch`.
    """
    from worldflux.training.checkpoint import save_checkpoint as write

    out: Path | None = None
    if ctx.is_main:
        tree: dict[str, Any] = {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "dist": {"step": step, "world_size": ctx.world_size, "global_batch": global_batch},
            "extra": extra or {},
        }
        out = write(path, tree)
    if ctx.distributed:
        dist.barrier()
    return out


def load_checkpoint(
    path: str | Path,
    ctx: DistContext,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Load what `save_checkpoint` wrote into `model` (and `optimizer`) on every rank.

    Every rank reads the file (multi-node runs need it on a shared filesystem). Returns the
    ``dist`` counters plus ``extra``, and ``per_rank_batch`` for this world size; raises
    `ConfigError` when the saved global batch does not split over `ctx.world_size` ranks.
    """
    from worldflux.training.checkpoint import load_checkpoint as read

    tree = read(path)
    info = dict(tree["dist"])
    info["per_rank_batch"] = per_rank_batch(int(info["global_batch"]), ctx.world_size)
    unwrap(model).load_state_dict(tree["model"])
    if optimizer is not None:
        if tree["optimizer"] is None:
            raise ConfigError(f"optimizer: checkpoint {path} holds no optimizer state")
        optimizer.load_state_dict(tree["optimizer"])
    info["extra"] = tree.get("extra", {})
    return info


def shard_batch(batch: Batch, ctx: DistContext) -> Batch:
    """This rank's contiguous slice of a global `batch` along B (B must divide by world size)."""
    b = per_rank_batch(batch.shape[0], ctx.world_size)
    lo, hi = ctx.rank * b, (ctx.rank + 1) * b
    obs = batch.obs
    sliced_obs = {k: v[lo:hi] for k, v in obs.items()} if isinstance(obs, Mapping) else obs[lo:hi]
    return Batch(
        obs=sliced_obs,
        action=batch.action[lo:hi],
        reward=batch.reward[lo:hi],
        is_first=batch.is_first[lo:hi],
        is_terminal=batch.is_terminal[lo:hi],
        is_last=batch.is_last[lo:hi],
    )


class GradientAllReduce:
    """Rank-mean gradients in one flat all-reduce per call: the synchroniser that
    `worldflux.core.gradsync.gradient_sync` installs for data-parallel agents.

    The flat buffer holds every gradient (zeros where a parameter has none), one has-gradient
    flag per parameter and a poison flag. Afterwards a parameter has a gradient when any rank
    had one (the mean over all ranks, counting the others as zeros, as DDP does for unused
    parameters); when any rank was poisoned (its loss was NaN/Inf) every gradient is NaN on
    every rank, so the finiteness check skips the step everywhere. Every rank must call it
    with the same parameters in the same order, which the shared update code guarantees.
    """

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self.calls = 0  # all-reduces issued (one per backward)
        self.seconds = 0.0  # wall time spent in them (packing, all-reduce, unpacking)

    def __call__(self, params: Sequence[Tensor], poisoned: bool) -> None:
        if not self.ctx.distributed or not params:
            return
        t0 = time.perf_counter()
        try:
            self._reduce(params, poisoned)
        finally:
            self.seconds += time.perf_counter() - t0

    def _reduce(self, params: Sequence[Tensor], poisoned: bool) -> None:
        dev = params[0].device
        grads = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
            for p in params
        ]
        flags = [0.0 if p.grad is None else 1.0 for p in params]
        tail = torch.tensor([*flags, 1.0 if poisoned else 0.0], device=dev)
        flat = torch.cat([*grads, tail])  # (sum numel + n + 1,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        self.calls += 1
        n_grad = flat.numel() - len(params) - 1
        has_grad = flat[n_grad:-1].cpu().tolist()
        if float(flat[-1]) > 0:  # some rank's loss was not finite: skip everywhere
            for p in params:
                p.grad = torch.full_like(p, float("nan"))
            return
        mean = flat[:n_grad].div_(self.ctx.world_size)
        offset = 0
        for p, seen in zip(params, has_grad, strict=True):
            n = p.numel()
            if seen > 0:
                chunk = mean[offset : offset + n].view_as(p)
                p.grad = chunk if p.dtype == chunk.dtype else chunk.to(p.dtype)
            else:
                p.grad = None
            offset += n


def average_buffers(modules: Sequence[nn.Module], ctx: DistContext) -> None:
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


def broadcast_modules(modules: Sequence[nn.Module], ctx: DistContext, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into every rank's modules (start equal)."""
    if not ctx.distributed:
        return
    with torch.no_grad():
        for m in modules:
            for t in [*m.parameters(), *m.buffers()]:
                dist.broadcast(t.data, src=src)

"""``torch.distributed`` helpers: process-group setup, metric reduction, batch and seed rules.

Launch with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``); `init_distributed` reads them. Without them, and without an explicit
`world_size`, it returns a single-process context and creates no process group, so one-process
training pays for nothing here. gloo is used on CPU and NCCL on CUDA.

Every rank holds the full model; the `Trainer`'s `DataParallel` sync strategy averages the
gradients (`worldflux.distributed.data_parallel`), so with ``B`` samples per rank an update
equals a single-process update on the global batch of ``B * world_size`` (same loss scale, since
each rank's loss is a mean). See docs/distributed.md for how batch size and learning rate scale.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from worldflux.core.exceptions import ConfigError

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


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when `flag` is true on one of them (a collective: every rank waits
    here for the others)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


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


def replica_max_diff(modules: Sequence[nn.Module], ctx: DistContext) -> float:
    """Largest |parameter - rank 0's parameter| over every rank: 0.0 when replicas agree.

    A diagnostic (one broadcast of all parameters): the gradient sync keeps replicas equal
    unless ranks apply different updates, e.g. an optimizer step skipped on one rank only.
    """
    if not ctx.distributed:
        return 0.0
    params = [p.detach().float().reshape(-1) for m in modules for p in m.parameters()]
    flat = torch.cat(params)  # (P,)
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

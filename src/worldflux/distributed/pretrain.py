"""Data-parallel world-model training from a saved replay, launched by ``torchrun``.

    torchrun --standalone --nproc-per-node 4 -m worldflux.distributed.pretrain \\
        --model dreamerv3:size12m --replay runs/x/checkpoints/step_0000100000/replay \\
        --out runs/pretrain --steps 20000 --global-batch 64 --seq-len 64

Every rank loads the replay (a folder written by `Replay.save`, e.g. a checkpoint's
``replay/``) and samples it with its own seed, ``shard_seed(seed, rank, epoch)``, so the ranks
draw independent batches of ``global_batch / world_size`` sequences; DDP averages the gradients.
Rank 0 writes checkpoints under ``<out>/checkpoints`` and rank-mean metrics to
``<out>/metrics.jsonl``. Re-running the same command resumes from the latest checkpoint, on any
world size that divides the global batch (``epoch`` counts the resumes).

An update whose loss or gradient norm is NaN/Inf on any rank is skipped on every rank (one
all-reduced flag, so the replicas never diverge) and counted (``nonfinite_total``); after
``max_nonfinite`` consecutive skips every rank stops with a `TrainingError`, its weights the last
finite ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldflux.core.exceptions import ConfigError
from worldflux.distributed import ddp
from worldflux.training.trainer import TrainingError


@dataclass(frozen=True)
class PretrainConfig:
    """One data-parallel world-model training run."""

    model: str  # "family:preset"
    replay: str  # folder written by Replay.save
    out: str  # run folder: checkpoints/ and metrics.jsonl
    steps: int = 1000  # total updates (including those before a resume)
    global_batch: int = 16  # sequences per update, summed over ranks
    seq_len: int = 64  # rows per sequence
    lr: float = 1e-4  # Adam learning rate tuned at base_batch
    base_batch: int = 16  # global batch at which `lr` was tuned
    lr_rule: str = "sqrt"  # "linear", "sqrt" or "none" (see ddp.scale_lr)
    grad_clip: float = 1000.0  # max gradient norm (<= 0: no clipping)
    within_episode: bool = False  # sample windows inside one episode (TD-MPC2 style)
    seed: int = 0  # model init and replay shard seeds
    checkpoint_every: int = 500  # updates between checkpoints (0: only at the end)
    log_every: int = 50  # updates between metric lines
    max_nonfinite: int = 20  # consecutive NaN/Inf updates (skipped) before the run stops
    device: str | None = None  # "cpu", "cuda" or None (cuda when available)

    def __post_init__(self) -> None:
        positive = ("steps", "global_batch", "seq_len", "base_batch", "log_every", "max_nonfinite")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected an int >= 1, got {getattr(self, name)}")
        if self.checkpoint_every < 0 or self.seed < 0:
            raise ConfigError(
                f"checkpoint_every and seed: expected ints >= 0, got "
                f"{self.checkpoint_every}, {self.seed}"
            )
        if not self.lr > 0:
            raise ConfigError(f"lr: expected a float > 0, got {self.lr}")
        ddp.scale_lr(self.lr, self.base_batch, self.global_batch, self.lr_rule)  # validates


def _latest(out: Path) -> Path | None:
    from worldflux.training.checkpoint import CheckpointManager

    return CheckpointManager(out).latest()


def _checkpoint(out: Path, step: int) -> Path:
    from worldflux.training.checkpoint import CheckpointManager

    return CheckpointManager(out).path_for(step)


def pretrain(cfg: PretrainConfig, ctx: ddp.DistContext) -> dict[str, Any]:
    """Run (or resume) `cfg` on this rank; returns the last rank-mean metrics."""
    import worldflux
    from worldflux.data.replay import Replay

    out = Path(cfg.out)
    replay = Replay.load(cfg.replay)
    model = worldflux.create_world_model(
        cfg.model, replay.obs_spec, replay.action_spec, seed=cfg.seed
    )
    module = ddp.wrap_model(model, ctx)
    lr = ddp.scale_lr(cfg.lr, cfg.base_batch, cfg.global_batch, cfg.lr_rule)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    step, epoch, skipped, streak = 0, 0, 0, 0
    latest = _latest(out)
    if latest is not None:
        info = ddp.load_checkpoint(latest, ctx, module, opt)
        step, epoch = int(info["step"]), int(info["extra"].get("epoch", 0)) + 1
        skipped = int(info["extra"].get("nonfinite_total", 0))
        if info["global_batch"] != cfg.global_batch:
            raise ConfigError(
                f"global_batch: the checkpoint {latest} was trained with "
                f"{info['global_batch']}, got {cfg.global_batch}"
            )
    replay.rng = np.random.default_rng(ddp.shard_seed(cfg.seed, ctx.rank, epoch))
    batch_size = ddp.per_rank_batch(cfg.global_batch, ctx.world_size)
    metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    while step < cfg.steps:
        batch = replay.sample(
            batch_size, cfg.seq_len, within_episode=cfg.within_episode, device=ctx.device
        )
        loss, raw = module(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # on every rank, finite or not: DDP's gradient all-reduce needs them all
        norm = _grad_norm(module, cfg.grad_clip)
        finite = bool(torch.isfinite(loss.detach())) and bool(torch.isfinite(norm))
        step += 1
        if all_ranks_finite(finite, ctx):
            opt.step()
            streak = 0
        else:  # skipped everywhere: parameters and optimizer state stay the last finite ones
            opt.zero_grad(set_to_none=True)
            skipped, streak = skipped + 1, streak + 1
            if streak >= cfg.max_nonfinite:
                raise TrainingError(
                    f"pretrain: {streak} consecutive updates had NaN/Inf losses or gradients "
                    f"on some rank (update {step}, {skipped} skipped in all); they were skipped "
                    f"on every rank, the weights are the last finite ones. Lower the learning "
                    f"rate or check the replay {cfg.replay}."
                )
        if step % cfg.log_every == 0 or step == cfg.steps:
            metrics = ddp.all_reduce_metrics({"loss": loss.detach(), **_scalars(raw)}, ctx)
            metrics["replica_max_diff"] = ddp.replica_max_diff(module, ctx)
            metrics["nonfinite_total"] = float(skipped)
            _log(out, ctx, step, metrics, time.perf_counter() - t0)
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
            extra = {"epoch": epoch, "config": dataclasses.asdict(cfg), "nonfinite_total": skipped}
            ddp.save_checkpoint(
                _checkpoint(out, step), ctx, module, opt, step, cfg.global_batch, extra
            )
    return {
        "step": step,
        "epoch": epoch,
        "world_size": ctx.world_size,
        **metrics,
        "nonfinite_total": float(skipped),
    }


def _grad_norm(module: torch.nn.Module, clip: float) -> torch.Tensor:
    """Total gradient norm (clipped to `clip` when > 0); NaN/Inf when a gradient is."""
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return torch.zeros(())
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])


def all_ranks_finite(finite: bool, ctx: ddp.DistContext) -> bool:
    """True only when `finite` holds on every rank (one MIN all-reduce); every rank agrees."""
    if not ctx.distributed:
        return finite
    flag = torch.tensor([1.0 if finite else 0.0], device=ctx.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _scalars(raw: dict[str, Any]) -> dict[str, Any]:
    """The scalar entries of a metrics dict (the same keys on every rank)."""
    return {
        k: v
        for k, v in raw.items()
        if isinstance(v, float | int) or (isinstance(v, torch.Tensor) and v.numel() == 1)
    }


def _log(
    out: Path, ctx: ddp.DistContext, step: int, metrics: dict[str, float], secs: float
) -> None:
    if not ctx.is_main:
        return
    out.mkdir(parents=True, exist_ok=True)
    values = {k: v if math.isfinite(v) else str(v) for k, v in metrics.items()}  # strict JSON
    line = {"step": step, "world_size": ctx.world_size, "seconds": round(secs, 3), **values}
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry (see the module docstring); flags mirror `PretrainConfig` fields."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(PretrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true")
        elif f.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=f.default)
    cfg = PretrainConfig(**vars(parser.parse_args(argv)))
    ctx = ddp.init_distributed(cfg.device)
    try:
        result = pretrain(cfg, ctx)
    finally:
        ddp.shutdown(ctx)
    if ctx.is_main:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

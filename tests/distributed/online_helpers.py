"""Rank workers of the data-parallel online-training tests (importable by forked children)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from worldflux.distributed import ddp

COMMON = [
    "seed_steps=64",
    "eval_every=96",
    "eval_episodes=1",
    "checkpoint_every=1000000000",
    "log_every=32",
    "progress=false",
    "tensorboard=false",
    "updates_per_step=0.25",
    "replay_capacity=2000",
]
FAMILIES = {
    "dreamerv3:debug": ("CartPole-v1", ["agent.batch_size=4", "agent.seq_len=8"]),
    "tdmpc2:debug": ("Pendulum-v1", ["agent.batch_size=4", "env.max_episode_steps=50"]),
    "jepa:debug": (
        "worldflux/TwoRoom-v0",
        [
            "agent.batch_size=4",
            "agent.seq_len=4",
            "agent.samples=16",
            "agent.elites=4",
            "agent.iterations=2",
            "agent.horizon=2",
            "env.max_steps=16",
        ],
    ),  # fmt: skip
}
STEPS = 192


def items(model: str, steps: int = STEPS) -> list[str]:
    return [*COMMON, *FAMILIES[model][1], f"steps={steps}", "seed=3"]


def agent_weights(agent: Any) -> dict[str, torch.Tensor]:
    """Every module tensor and optimizer moment of `agent`, flat, for bitwise comparison."""
    flat: dict[str, torch.Tensor] = {}
    for name, module in agent.modules().items():
        for k, v in module.state_dict().items():
            flat[f"{name}.{k}"] = v.detach().clone().contiguous()
    for name, opt in agent.optimizers().items():
        for pid, st in opt.state_dict()["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    flat[f"opt.{name}.{pid}.{k}"] = v.detach().clone().contiguous()
    return flat


def run_job(ctx: ddp.DistContext, job: dict[str, Any]) -> None:
    """Build (or resume) the job's run on this rank, train, save weights and counters."""
    from worldflux.training.run import build_trainer, resume_trainer
    from worldflux.training.run_config import parse_overrides

    run_dir = Path(job["run_dir"])
    if ctx.rank == 1:
        time.sleep(job.get("late", 0.0))  # a slower rank
    if job.get("resume"):
        trainer = resume_trainer(run_dir, distributed=ctx, **job.get("changes", {}))
    else:
        spec = parse_overrides(job["model"], FAMILIES[job["model"]][0], job["items"])
        trainer = build_trainer(spec, run_dir, distributed=ctx)
    trainer.train(job.get("stop_at"))
    out = Path(job["out"])
    tag = f"{job['name']}_rank{ctx.rank}"
    save_file(agent_weights(trainer.agent), str(out / f"{tag}.safetensors"))
    info = {
        "step": trainer.step,
        "updates": trainer.updates,
        "sync_calls": trainer.sync.reducer.calls,
        "batch_size": trainer.agent.batch_size,
        "learn_from": trainer.learn_from,
        "replay_digest": hashlib.sha256(trainer.replay.arrays["action"].tobytes()).hexdigest(),
        "replay_dir": None if trainer.replay.directory is None else str(trainer.replay.directory),
    }
    (out / f"{tag}.json").write_text(json.dumps(info))


def online_worker(rank: int, world: int, init_file: str, jobs: list[dict[str, Any]]) -> None:
    torch.set_num_threads(1)
    ctx = ddp.init_distributed(
        device="cpu", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        for job in jobs:
            run_job(ctx, job)
    finally:
        ddp.shutdown(ctx)


def grad_sync_worker(rank: int, world: int, init_file: str, out: str) -> None:
    """`guarded_step` under `GradientAllReduce` on this rank's half of a fixed batch."""
    from worldflux.agents.base import guarded_step
    from worldflux.distributed.data_parallel import GradientAllReduce, average_buffers
    from worldflux.distributed.gradsync import gradient_sync

    torch.set_num_threads(1)
    ctx = ddp.init_distributed(
        device="cpu", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        model, opt = grad_model()
        sync = GradientAllReduce(ctx)
        x, y = grad_batch()
        half = x.shape[0] // world
        xs, ys = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
        record: dict[str, Any] = {}
        with gradient_sync(sync):
            ok, norm = guarded_step(grad_loss(model, xs, ys, rank), opt, model.parameters(), 0.5)
            record["step1"] = [bool(ok), float(norm)]
            before = {k: v.clone() for k, v in model.state_dict().items()}
            bad = grad_loss(model, xs, ys, rank) * (float("nan") if rank == 1 else 1.0)
            ok, norm = guarded_step(bad, opt, model.parameters(), 0.5)
            record["step2"] = [bool(ok), float(norm)]
            record["unchanged"] = all(
                torch.equal(before[k], v) for k, v in model.state_dict().items()
            )
        model.stat.fill_(float(rank + 1))  # a per-rank statistic: averaged to the rank mean
        average_buffers([model], ctx)
        record["stat"] = float(model.stat)
        record["calls"] = sync.calls
        (Path(out) / f"grad{rank}.json").write_text(json.dumps(record))
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(Path(out) / f"grad{rank}.safetensors"),
        )
    finally:
        ddp.shutdown(ctx)


class GradModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
        )
        self.rank0_only = torch.nn.Parameter(torch.ones(1))  # gets a gradient on rank 0 only
        self.register_buffer("stat", torch.zeros(()))


def grad_model() -> tuple[GradModel, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = GradModel()
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def grad_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g) * 10


def grad_loss(model: GradModel, x: torch.Tensor, y: torch.Tensor, rank: int) -> torch.Tensor:
    """Mean squared error, plus a term in `rank0_only` on rank 0's half only."""
    loss = ((model.net(x) - y) ** 2).mean()
    if rank == 0:
        loss = loss + (model.rank0_only**2).sum()
    return loss

"""Running a trainer from the command line: in this process or as one ``torchrun`` rank, the
rank-0 report, and the exit code of a SIGTERM stop (143)."""

from __future__ import annotations

from typing import Any

import typer


def report(result: dict[str, Any], trainer: Any) -> None:
    latest = trainer.checkpoints.latest()
    ev = result.get("eval")
    typer.echo(f"run dir:     {trainer.run_dir}")
    typer.echo(
        f"metrics:     {trainer.run_dir / 'metrics.jsonl'}  (TensorBoard: {trainer.run_dir / 'tb'})"
    )
    typer.echo(f"checkpoint:  {latest}")
    typer.echo(
        f"env steps:   {result['step']}  updates: {result['updates']}  "
        f"skipped non-finite updates: {result['nonfinite']}"
    )
    if ev:
        typer.echo(
            f"last eval:   return {ev['return_mean']:.1f} +- {ev['return_std']:.1f} "
            f"over {len(ev['returns'])} episodes"
        )
    pool = result.get("collectors")
    if pool is not None:
        restarts = sum(c["restarts"] for c in pool["collectors"])
        method = trainer.run_info.get("collectors", {}).get("start_method", "spawn")
        typer.echo(
            f"collectors:  {len(pool['collectors'])} ({method}), "
            f"policy version {pool['version']}, restarts {restarts}"
        )
    if trainer.sync.world_size > 1:
        typer.echo(f"ranks:       {trainer.sync.world_size} (data-parallel)")


def train_or_exit(trainer: Any) -> dict[str, Any]:
    """`trainer.train()`; a stop by SIGTERM (checkpoint saved and reported) exits with 143."""
    from worldflux.training.signals import Terminated

    try:
        result: dict[str, Any] = trainer.train()
    except Terminated:
        raise typer.Exit(128 + 15) from None
    finally:
        trainer.close()  # envs, env worker processes, collectors
    return result


def run_trainer(build: Any, device: str, said: str = "") -> None:
    """Build a trainer with `build(distributed)` and train it: in this process, or as one rank
    of a ``torchrun`` job (its variables set: ``torchrun -m worldflux ...``) on `device`'s type.
    The rank 0 process reports; `said` (formatted with the trainer) is printed first."""
    from worldflux.distributed import ddp

    ctx = ddp.init_distributed(device.split(":")[0]) if ddp.torchrun_env() else None
    try:
        trainer = build(ctx)
        if said and trainer.sync.is_main:
            typer.echo(said.format(trainer=trainer))
        result = train_or_exit(trainer)
    finally:
        if ctx is not None:
            ddp.shutdown(ctx)
    if trainer.sync.is_main:
        report(result, trainer)


def relaunch(nproc: int, argv: list[str]) -> None:
    """``worldflux <argv>`` on `nproc` local data-parallel ranks (torchrun); exits with its code."""
    from worldflux.distributed.launch import run_local_ranks

    raise typer.Exit(run_local_ranks(nproc, argv))

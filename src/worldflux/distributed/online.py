"""Data-parallel online training: every rank steps its own envs into its own replay shard and
trains a replica of the agent; gradients are averaged after every backward, so the replicas
stay identical. Launched by ``torchrun``:

    torchrun --standalone --nproc-per-node 4 -m worldflux.distributed.online \\
        dreamerv3:size12m --env dmc:walker-walk --run-dir runs/walker-x4 steps=1000000

Re-running the same command resumes from the run dir's latest checkpoint, on any world size
that divides the global batch. Overrides are the ``worldflux train`` ones (trainer fields,
``agent.x``, ``env.x``, model fields). What they mean across ranks:

- ``steps``, ``seed_steps``, ``eval_every``, ``checkpoint_every`` and ``log_every`` count env
  steps summed over ranks; each rank steps ``num_envs`` envs per iteration, so one iteration is
  ``world_size * num_envs`` env steps.
- ``agent.batch_size`` is the global batch: each rank samples ``batch_size / world_size``
  sequences from its own shard (it must divide). ``train_ratio`` / ``updates_per_step`` keep
  their single-process meaning for the global data and the global batch, so a run on W ranks
  makes the same number of updates per env step as one process, each W times cheaper per rank.
- Rank 0 uses ``seed`` itself (a world size of 1 is exactly the single-process `Trainer`); rank
  r > 0 seeds its envs, replay sampling and acting noise with ``ddp.shard_seed(seed, r)``.
  Weights start as rank 0's on every rank.
- Rank 0 evaluates and writes ``run.json``, ``metrics.jsonl`` (train metrics are rank means),
  TensorBoard and checkpoints; rank r > 0 logs its episodes to ``ranks/rank<r>/metrics.jsonl``.
- A checkpoint is a normal single-process checkpoint (rank 0's view: `worldflux eval`,
  `imagine` and single-process `resume` read it) plus ``shards/rank<r>/`` with each other
  rank's envs, RNGs, acting state and replay. Resuming on the same world size is exact. On
  another world size, ranks without a shard start fresh episodes into an empty replay and every
  rank pauses updates until they have refilled (``seed_steps``); shards beyond the new world
  size are dropped (a warning says so).
- Ctrl-C: the ranks agree, at the end of each iteration, to stop together and checkpoint (one
  1-element all-reduce per iteration). An interrupt that lands mid-iteration stops without one.

What is synchronised: gradients (`worldflux.core.gradsync`, one flat all-reduce per backward,
before clipping, the NaN/Inf check and the optimizer step, so a skipped step is skipped on every
rank) and floating-point buffers after each update (DreamerV3's return-percentile EMA, TD-MPC2's
Q scale: `ddp.average_buffers`). Losses built from batch statistics (JEPA's SIGReg and VICReg)
see only the rank's own part of the batch, as BatchNorm does under DDP without SyncBatchNorm.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from worldflux.core.exceptions import ConfigError
from worldflux.core.gradsync import gradient_sync
from worldflux.distributed import ddp
from worldflux.training.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    save_checkpoint,
)
from worldflux.training.config import TrainerConfig, seed_everything
from worldflux.training.trainer import Trainer

SHARDS = "shards"


def rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps `seed` (so one rank equals a single process); others get a shard seed."""
    return seed if rank == 0 else ddp.shard_seed(seed, rank)


class DataParallelTrainer(Trainer):
    """The online (or offline) `Trainer` on one rank of a data-parallel job; see the module
    docstring for what is global, what is per rank and what a checkpoint holds.

    Build it with `build_data_parallel_trainer` (which splits the global batch); `agent` must
    already sample ``batch_size / world_size`` sequences, and `config` is the run's (global)
    configuration: the rank's own seed is derived here.
    """

    def __init__(
        self,
        agent: Any,
        env_fn: Any,
        replay: Any,
        config: TrainerConfig,
        run_dir: str | Path,
        ctx: ddp.DistContext,
        run_info: dict[str, Any] | None = None,
        eval_env_fn: Any = None,
    ) -> None:
        self.ctx = ctx
        self.base_config = config
        rank_config = dataclasses.replace(
            config,
            seed=rank_seed(config.seed, ctx.rank),
            progress=config.progress and ctx.is_main,
            tensorboard=config.tensorboard and ctx.is_main,
        )
        super().__init__(agent, env_fn, replay, rank_config, run_dir, run_info, eval_env_fn)
        self.world_size = ctx.world_size
        if not ctx.is_main:
            self.log_dir = self.run_dir / "ranks" / f"rank{ctx.rank}"
        self.sync = ddp.GradientAllReduce(ctx)
        self._shard_dir: Path | None = None  # set by restore
        ddp.broadcast_modules(list(agent.modules().values()), ctx)  # every replica starts equal

    # --- the loop's hooks ---------------------------------------------------------------------

    def train(self, stop_at: int | None = None) -> dict[str, Any]:
        with gradient_sync(self.sync):
            return super().train(stop_at)

    def _update(self, batch: Any) -> dict[str, Any]:
        metrics = self.agent.update(batch)
        ddp.average_buffers(list(self.agent.modules().values()), self.ctx)
        return metrics

    def _log_train(self, metrics: dict[str, Any]) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        reduced = ddp.all_reduce_metrics(scalars, self.ctx)  # the same keys on every rank
        if self.ctx.is_main:
            super()._log_train(reduced)

    def run_eval(self, video: str | Path | None = None) -> dict[str, Any]:
        """Rank 0 evaluates (the replicas are identical); other ranks return {}."""
        if not self.ctx.is_main:
            return {}
        return super().run_eval(video)

    def _stop_requested(self, requested: bool) -> bool:
        if not self.ctx.distributed:
            return requested
        flag = torch.tensor([1.0 if requested else 0.0], device=self.ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _may_save_on_interrupt(self) -> bool:
        # Only an agreed stop leaves every rank at the same point, ready for the collective save.
        return not self.ctx.distributed or not self._partial

    # --- checkpoints --------------------------------------------------------------------------

    def state_tree(self) -> dict[str, Any]:
        tree = super().state_tree()
        tree["trainer_config"] = self.base_config.to_dict()  # the run's seed, not rank 0's copy
        tree["data_parallel"] = {"world_size": self.ctx.world_size}
        return tree

    def shard_tree(self) -> dict[str, Any]:
        """What only this rank knows: its envs, RNGs, acting state and replay sampler (the keys
        `Trainer._restore_streams` reads, plus the agent's extra state)."""
        act = None if self.act_state is None else {"tensors": self.act_state.tensors}
        return {
            "rank": self.ctx.rank,
            "world_size": self.ctx.world_size,
            "counters": {"learn_from": self.learn_from, "episodes": self.episodes},
            "act_state": act,
            "runner": self.runner.state_dict(),
            "rng": capture_rng(),
            "trainer_rng": self.rng.bit_generator.state,
            "replay_rng": self.replay.get_state(),
            "agent_extra": self.agent.extra_state(),
            "goals_stale": self.goals_stale,
            "partial_step": self._partial,
            "replay_saved": self.config.save_replay,
        }

    def save(self) -> Path:
        """Every rank writes its shard into a staging folder; rank 0 writes the checkpoint and
        moves the shards into it before the atomic rename. All ranks return the path."""
        path = self.checkpoints.path_for(self.step)
        staging = path.parent / f".{path.name}.shards"
        if self.ctx.is_main and staging.exists():
            shutil.rmtree(staging)  # left by a run that died while saving
        self._barrier()
        if not self.ctx.is_main:

            def replay_files(tmp: Path) -> None:
                if self.config.save_replay:
                    self.replay.save(tmp / "replay")

            save_checkpoint(staging / f"rank{self.ctx.rank}", self.shard_tree(), replay_files)
        self._barrier()
        if self.ctx.is_main:

            def extra(tmp: Path) -> None:
                if self.config.save_replay:
                    self.replay.save(tmp / "replay")
                if staging.exists():
                    staging.rename(tmp / SHARDS)

            self.checkpoints.save(self.step, self.state_tree(), extra)
        self._barrier()
        return path

    def restore(self, path: str | Path | None = None) -> None:
        """Load the shared state (weights, optimizers, counters) and this rank's streams: rank
        0's from the checkpoint itself, rank r's from ``shards/rank<r>``, and a rank the
        checkpoint has no shard for starts fresh episodes into its empty replay."""
        path = Path(path) if path is not None else self.checkpoints.latest()
        if path is None:
            raise CheckpointError(f"resume: no checkpoint under {self.run_dir / 'checkpoints'}")
        self._shard_dir = path / SHARDS / f"rank{self.ctx.rank}"
        super().restore(path)
        saved_world = 1 + max((int(d.name[4:]) for d in (path / SHARDS).glob("rank*")), default=0)
        if self.ctx.is_main and saved_world > self.ctx.world_size:
            warnings.warn(
                f"resume: the checkpoint was written by {saved_world} ranks; the replay shards "
                f"and envs of ranks {self.ctx.world_size}..{saved_world - 1} are dropped",
                stacklevel=2,
            )
        self._agree_learn_from()

    def _restore_streams(self, tree: dict[str, Any], path: Path) -> None:
        if self.ctx.is_main:
            super()._restore_streams(tree, path)
        elif self._shard_dir is not None and self._shard_dir.is_dir():
            shard = load_checkpoint(self._shard_dir)
            super()._restore_streams(shard, self._shard_dir)
            self.agent.load_extra_state(shard["agent_extra"])
            self.episodes = int(shard["counters"]["episodes"])
        else:  # a rank the checkpoint has no shard for: fresh episodes, its own seeds
            seed = ddp.shard_seed(self.base_config.seed, self.ctx.rank, epoch=1 + self.step)
            seed_everything(seed)
            self.rng = np.random.default_rng(seed)
            self.episodes = 0
            self._restart_episodes(refill=True)

    def _agree_learn_from(self) -> None:
        """Every rank must make the same updates: wait for the slowest refill (MAX)."""
        if not self.ctx.distributed:
            return
        value = torch.tensor([float(self.learn_from)], dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        self.learn_from = int(value.item())

    def _barrier(self) -> None:
        if self.ctx.distributed:
            dist.barrier()


# --- building and launching --------------------------------------------------------------------


def build_data_parallel_trainer(
    spec: Any, run_dir: str | Path, ctx: ddp.DistContext, resume: bool = False
) -> DataParallelTrainer:
    """This rank's trainer for `spec` (a `worldflux.training.run.RunSpec`).

    Everything is validated on every rank before any collective runs, so a bad option fails
    on all ranks with the same `ConfigError`. Rank 0 writes ``run.json`` once the trainer is
    built; with `resume`, every rank loads the latest checkpoint.
    """
    from worldflux.agents import make_agent
    from worldflux.training.config import check_device
    from worldflux.training.run import env_factory, make_replay, write_spec

    config = spec.trainer_config()
    check_device(config.device)
    if ctx.device.type != torch.device(config.device).type:
        raise ConfigError(
            f"device: the process group runs on {ctx.device.type} ({ctx.backend}), but the run "
            f"asks for device={config.device!r}; launch with a matching device"
        )
    device = str(ctx.device) if ctx.device.type == "cuda" else config.device
    config = dataclasses.replace(config, device=device)
    env_fn = env_factory(spec)
    probe = env_fn(0)
    agent = make_agent(
        spec.model,
        probe.observation_space,
        probe.action_space,
        config.seed,
        config.device,
        spec.model_overrides,
        spec.agent,
    )
    try:
        agent.batch_size = ddp.per_rank_batch(agent.batch_size, ctx.world_size)
    except ConfigError:
        raise ConfigError(
            f"agent.batch_size: the global batch is split over {ctx.world_size} ranks, so it "
            f"must be a multiple of {ctx.world_size}; got {agent.batch_size}"
        ) from None
    rank_config = dataclasses.replace(config, seed=rank_seed(config.seed, ctx.rank))
    replay = make_replay(rank_config, probe.observation_space, probe.action_space)
    probe.close()
    run_info = dataclasses.asdict(spec)
    trainer = DataParallelTrainer(agent, env_fn, replay, config, run_dir, ctx, run_info)
    if resume:
        trainer.restore()
    if ctx.is_main:
        write_spec(spec, run_dir)
    if ctx.distributed:
        dist.barrier()
    return trainer


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m worldflux.distributed.online MODEL --env ENV --run-dir DIR [key=value ...]``
    (under torchrun; without it, one process). Resumes when DIR has checkpoints."""
    from worldflux.training.checkpoint import CheckpointManager
    from worldflux.training.run import load_spec, parse_overrides

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="family:preset, e.g. dreamerv3:size12m")
    parser.add_argument("--env", required=True, help="environment id, e.g. CartPole-v1")
    parser.add_argument("--run-dir", required=True, help="run folder (resumed when it exists)")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="collective timeout")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_intermixed_args(argv)
    spec = parse_overrides(args.model, args.env, args.overrides)
    run_dir = Path(args.run_dir)
    resume = CheckpointManager(run_dir).latest() is not None
    if resume:  # the saved spec, with this command's trainer overrides (e.g. more steps)
        saved = load_spec(run_dir)
        if (saved.model, saved.env) != (spec.model, spec.env):
            raise ConfigError(
                f"run_dir: {run_dir} holds a {saved.model} run on {saved.env}, not "
                f"{spec.model} on {spec.env}"
            )
        saved.trainer.update(spec.trainer)
        spec = saved
    device = str(spec.trainer.get("device", "cpu")).split(":")[0]
    ctx = ddp.init_distributed(device, timeout_s=args.timeout_s)
    try:
        trainer = build_data_parallel_trainer(spec, run_dir, ctx, resume=resume)
        result = trainer.train()
        result["world_size"] = ctx.world_size
    finally:
        ddp.shutdown(ctx)
    if ctx.is_main:
        print(
            f"done: {result['step']} env steps, {result['updates']} updates on "
            f"{ctx.world_size} rank(s); run dir {run_dir}",
            file=sys.stderr,
        )
    return result


if __name__ == "__main__":
    main()

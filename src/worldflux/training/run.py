"""Runs from names: a `RunConfig` -> a ready `Trainer` (`build_trainer`), and a run dir -> the
same `Trainer` at its latest checkpoint (`resume_trainer`).

One builder for every way of training: envs in this process, ``collectors=N`` collector
processes, offline data (``trainer.dataset``: an `OfflineDataset` folder or a saved `Replay`,
world-model pretraining), each alone or under ``distributed=ctx`` (data-parallel ranks, from
`worldflux.distributed.ddp.init_distributed`; ``torchrun -m worldflux train ...`` and
``worldflux train --nproc N`` build through here).

A run directory holds ``run.json`` (the `RunConfig`), ``metrics.jsonl``, ``tb/``,
``checkpoints/``, ``videos/`` (``video_every``) and, with ``wandb=true``, ``wandb_id``;
``worldflux resume <run dir>`` continues exactly where the run stopped (with its collectors,
on any world size).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from worldflux.agents import make_agent
from worldflux.agents.io import load_agent, load_run_agent, read_checkpoint  # noqa: F401 - moved
from worldflux.core.exceptions import ConfigError, WorldFluxError
from worldflux.training.config import TrainerConfig, check_device
from worldflux.training.run_config import RUN_FILE, RunConfig, read_run_file, write_run_file
from worldflux.training.sources import EnvSource, OfflineSource, Source
from worldflux.training.trainer import Trainer


def default_run_dir(config: RunConfig, root: str | Path = "runs") -> Path:
    """``<root>/<model>_<env>_<time stamp>``, with a suffix if two runs start in one second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    env = (config.env_id or "offline").replace("/", "-").replace(":", "-")
    name = f"{config.model_name.replace(':', '-')}_{env}"
    path, n = Path(root) / f"{name}_{stamp}", 1
    while path.exists():
        n += 1
        path = Path(root) / f"{name}_{stamp}-{n}"
    return path


def check_new_run_dir(run_dir: str | Path) -> Path:
    """`run_dir` for a new run: absent or an empty directory, else a one-line `ConfigError`.

    A second run written into an existing one would overwrite its run.json and interleave the
    checkpoints (``keep`` then deletes the newer run's), losing both; nothing is touched here.
    """
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run_dir: {path} is a file; expected a new or empty directory")
    if path.is_dir() and any(path.iterdir()):
        if (path / RUN_FILE).is_file():
            raise ConfigError(
                f"run_dir: {path} already holds a run; continue it with `worldflux resume "
                f"{path}` (add --steps N to extend it) or choose another --run-dir"
            )
        raise ConfigError(f"run_dir: {path} is not empty; a new run needs a new or empty directory")
    return path


def _check_run_dir_on_every_rank(run_dir: str | Path, ctx: Any) -> None:
    """`check_new_run_dir` on every data-parallel rank before any rank writes into it (rank 0's
    files would make a slower rank refuse the run dir); a refusal on one rank is one on all."""
    from worldflux.distributed.ddp import any_rank

    try:
        check_new_run_dir(run_dir)
    except ConfigError:
        any_rank(True, ctx)
        raise
    if any_rank(False, ctx):
        raise ConfigError(f"run_dir: {run_dir} was refused on another rank")


def finished_message(run_dir: str | Path, steps: int | None) -> str | None:
    """What to say instead of resuming when the run reached its step budget and `steps` does
    not extend it (None: resume). A `ConfigError` when `steps` is not beyond the latest
    checkpoint; checked before the run is rebuilt, since resuming rewrites run.json."""
    from worldflux.training.checkpoint import CheckpointManager

    config = read_run_file(run_dir)
    latest = CheckpointManager(run_dir).latest()
    if latest is None:
        return None  # resuming reports the missing checkpoint
    done = int(latest.name.removeprefix("step_"))
    if steps is not None:
        if steps <= done:
            raise ConfigError(
                f"--steps: expected a new total above the {done} env steps {run_dir} has done, "
                f"got {steps}"
            )
        return None
    total = int(config.trainer.get("steps", TrainerConfig.steps))
    if done < total:
        return None
    return (
        f"{run_dir} is finished (at env step {done} of {total}); to train on, extend it: "
        f"worldflux resume {run_dir} --steps {2 * total}"
    )


def env_factory(config: RunConfig, render: bool = False) -> Any:
    """index -> a fresh env of the run (`worldflux.envs.make_env_fn`: seeded by the source /
    evaluator); with `render`, made with ``render_mode="rgb_array"`` (for videos)."""
    if config.env_id is None:
        raise ConfigError("env: this run has no env (offline data only); pass --env ENV")
    from worldflux.envs import make_env_fn

    options = config.env_options()
    if render:
        options["render_mode"] = "rgb_array"
    return make_env_fn(config.env_id, **options)


def build_trainer(
    config: RunConfig,
    run_dir: str | Path,
    *,
    collectors: int = 0,
    distributed: Any = None,
    **collector_options: Any,
) -> Trainer:
    """A fresh `Trainer` for `config`; writes ``run.json`` into `run_dir`.

    `collectors` > 0 steps the envs in that many collector processes (`collector_options` are
    further `CollectorConfig` fields, e.g. ``start_method``); `distributed` is this rank's
    `DistContext` for data-parallel training. Everything is validated (config, device, env,
    agent and model options) and built first, on every rank: a rejected command fails the same
    way everywhere and leaves no run dir behind; an existing non-empty `run_dir` is refused.
    """
    if distributed is None:
        check_new_run_dir(run_dir)
    if collectors:
        start = str(collector_options.get("start_method", "spawn"))
        config.collectors = {"num_collectors": collectors, "start_method": start}
    trainer = _build(config, run_dir, distributed, collector_options, new_run=True)
    if trainer.sync.is_main:
        write_run_file(config, run_dir)
    return trainer


def resume_trainer(
    run_dir: str | Path,
    *,
    collectors: int | None = None,
    distributed: Any = None,
    collector_options: dict[str, Any] | None = None,
    **trainer_changes: Any,
) -> Trainer:
    """Rebuild the run in `run_dir` and load its latest checkpoint.

    `trainer_changes` may extend the run (``steps=...``) or change threads/device/progress. A
    collector run resumes with the collectors ``run.json`` recorded unless `collectors` (and
    ``start_method`` in `collector_options`) say otherwise; a single-process run resumes in
    one process unless `collectors` is given. `distributed`: as for `build_trainer` (any
    world size that divides the batch).
    """
    config = read_run_file(run_dir)
    config.trainer.update(trainer_changes)
    collector_options = dict(collector_options or {})
    recorded = config.collectors
    if collectors is None:
        collectors = int(recorded.get("num_collectors", 0))
    if collectors and "start_method" in recorded:
        collector_options.setdefault("start_method", recorded["start_method"])
    if collectors:
        start = str(collector_options.get("start_method", "spawn"))
        config.collectors = {"num_collectors": collectors, "start_method": start}
    trainer = _build(config, run_dir, distributed, collector_options)
    trainer.restore()
    if trainer.sync.is_main:
        write_run_file(config, run_dir)  # the changes, once the checkpoint is known to load
    return trainer


def _build(
    config: RunConfig,
    run_dir: str | Path,
    ctx: Any,
    collector_options: dict[str, Any],
    new_run: bool = False,
) -> Trainer:
    tc = config.trainer_config()
    check_device(tc.device)  # before any model is moved there
    sync = None
    if ctx is not None:
        if config.collectors and ctx.world_size > 1:  # ranks would count different steps
            raise ConfigError("collectors: not with data-parallel ranks; use one or the other")
        tc = _rank_device(tc, ctx)
        from worldflux.distributed.data_parallel import DataParallel

        sync = DataParallel(ctx)
    env_fn = env_factory(config) if config.env_id is not None else None
    data = open_dataset(tc.dataset) if tc.dataset is not None else None
    probe = env_fn(0) if env_fn is not None else None
    try:
        spaces = _spaces(probe, data)
        agent = make_agent(
            config.model_name, *spaces, tc.seed, tc.device, config.model_options(), config.agent,
            native_action_space=getattr(probe, "native_action_space", None),
        )  # fmt: skip
        if sync is not None:
            _split_batch(agent, sync.world_size)
        _check_envs(agent, probe, tc, bool(config.collectors))
    finally:
        if probe is not None:
            probe.close()
    if new_run and ctx is not None:  # validated on every rank; nothing written yet
        _check_run_dir_on_every_rank(run_dir, ctx)
    seed = tc.seed if sync is None else sync.stream_seed(tc.seed)
    options = {**collector_options, "replay_dir": _replay_dir(tc, run_dir, sync)}
    source = _source(config, tc, (agent, spaces), env_fn, data, seed, options)
    video_fn = env_factory(config, render=True) if tc.video_every and env_fn else None
    return Trainer(
        agent, source, tc, run_dir, sync=sync, eval_env_fn=env_fn, run_info=config.to_dict(),
        video_env_fn=video_fn,
    )  # fmt: skip


def _replay_dir(tc: TrainerConfig, run_dir: str | Path, sync: Any) -> Path | None:
    """Where a disk-backed replay lives (``replay_on_disk``): ``<run_dir>/replay``, and
    ``<run_dir>/ranks/rank<r>/replay`` for data-parallel rank r > 0; None keeps it in RAM."""
    if not tc.replay_on_disk:
        return None
    if tc.dataset is not None:
        raise ConfigError(
            "replay_on_disk: offline runs (dataset=...) fill no replay; drop replay_on_disk"
        )
    if sync is None or sync.is_main:
        return Path(run_dir) / "replay"
    return Path(run_dir) / "ranks" / f"rank{sync.rank}" / "replay"


def _rank_device(tc: TrainerConfig, ctx: Any) -> TrainerConfig:
    import torch

    if ctx.device.type != torch.device(tc.device).type:
        raise ConfigError(
            f"device: the process group runs on {ctx.device.type} ({ctx.backend}), but the run "
            f"asks for device={tc.device!r}; launch with a matching device"
        )
    return dataclasses.replace(
        tc, device=str(ctx.device) if ctx.device.type == "cuda" else tc.device
    )


def open_dataset(path: str) -> Any:
    """Offline data at `path`: an `OfflineDataset` folder (``meta.json``) or a folder written
    by `Replay.save` (``replay.json``, e.g. a checkpoint's ``replay/``)."""
    from worldflux.data.offline import OfflineDataset
    from worldflux.data.replay import Replay

    try:
        if (Path(path) / "meta.json").is_file() or not (Path(path) / "replay.json").is_file():
            return OfflineDataset(path)
        return Replay.load(path)
    except WorldFluxError as err:
        raise ConfigError(f"dataset: cannot open {path!r}: {err}") from err


def _spaces(probe: Any, data: Any) -> tuple[Any, Any]:
    """(observation, action) spaces of the run: the env's, else the saved replay's specs."""
    if probe is not None:
        return probe.observation_space, probe.action_space
    if data is not None and hasattr(data, "obs_spec"):
        return data.obs_spec, data.action_spec
    raise ConfigError("env: needed for the observation and action spaces; pass --env ENV")


def _split_batch(agent: Any, world_size: int) -> None:
    """``agent.batch_size`` is the global batch: each rank samples its share."""
    if agent.batch_size % world_size:
        raise ConfigError(
            f"agent.batch_size: the global batch is split over {world_size} ranks, so it "
            f"must be a multiple of {world_size}; got {agent.batch_size}"
        )
    agent.batch_size //= world_size


def _check_envs(agent: Any, probe: Any, tc: TrainerConfig, collectors: bool) -> None:
    """Up front: the agent can act in the run's envs (where it acts in them at all)."""
    online = tc.dataset is None
    if probe is None:
        if online or tc.eval_every > 0:
            raise ConfigError("env: needed to act and evaluate; pass --env ENV (or eval_every=0)")
        return
    if not online and tc.eval_every == 0:
        return
    try:
        agent.check_envs([probe])
    except ConfigError as err:
        if online and not collectors:
            raise ConfigError(f"{err}; or train offline: dataset=<folder>, eval_every=0") from None
        if online:
            raise
        raise ConfigError(f"eval_every: {err}; or set eval_every=0") from None


def _source(
    config: RunConfig,
    tc: TrainerConfig,
    built: tuple[Any, tuple[Any, Any]],
    env_fn: Any,
    data: Any,
    seed: int,
    collector_options: dict[str, Any],
) -> Source:
    """The run's data source; `built` is (agent, its observation and action spaces);
    `collector_options` also hold ``replay_dir`` (see `_replay_dir`)."""
    agent, spaces = built
    collector_options = dict(collector_options)
    replay_dir = collector_options.pop("replay_dir", None)
    if data is not None:
        return OfflineSource(data, seed)
    collectors = int(config.collectors.get("num_collectors", 0))
    if collectors and config.env_vector != "sync":
        raise ConfigError(
            f"env.vector: collectors already step their envs in processes; expected 'sync' "
            f"with collectors, got {config.env_vector!r}"
        )
    if collectors:
        from worldflux.distributed.collector_source import collector_source

        options = {"seed": seed, **collector_options}
        return collector_source(config, tc, agent, spaces, collectors, options, replay_dir)
    replay = make_replay(tc, spaces, tc.num_envs, seed, directory=replay_dir)
    return EnvSource(env_fn, tc.num_envs, seed, replay, vector=config.env_vector)


def make_replay(
    tc: TrainerConfig, spaces: tuple[Any, Any], streams: int, seed: int, **options: Any
) -> Any:
    """The run's replay: `streams` streams (one per env copy) of the run's `spaces`; memmaps
    in `options["directory"]` when given (``replay_on_disk``)."""
    from worldflux.data.replay import Replay

    return Replay(tc.replay_capacity, *spaces, num_envs=streams, seed=seed, **options)

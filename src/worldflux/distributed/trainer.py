"""`CollectorTrainer`: the online `Trainer` with env steps gathered by collector processes.

``worldflux train MODEL --env ENV --collectors N`` builds one with `build_collector_trainer`.
Everything but collection is the plain `Trainer` (updates, evaluation, checkpoints, logging):

- each loop iteration polls the pool and adds every received row to the replay (collector i's
  env copy j is replay stream ``i * num_envs + j``); the train-ratio credit grows per row;
- every `weight_sync_every` updates the agent's modules are published as a new policy version;
  the replay (``track_versions=True``) stores, per row, the version that acted it;
- ``run.json`` records ``collectors`` (``num_collectors``, ``start_method``), so
  ``worldflux resume RUN`` continues with the same collectors (`resume_collector_trainer`);
- collectors act with the agent from the first step (there is no uniform-random seed phase in
  the collectors; `seed_steps` still delays the first update, and so does waiting until one
  replay stream holds a full `seq_len` window), and an exact resume of the env streams is not
  possible: a resumed run restarts the collectors' episodes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from worldflux.distributed.collectors import CollectorConfig, CollectorPool
from worldflux.distributed.policies import AgentPolicy
from worldflux.envs.base import Env
from worldflux.training.config import TrainerConfig
from worldflux.training.trainer import Trainer


class CollectorTrainer(Trainer):
    """A `Trainer` fed by a `CollectorPool` (see the module docstring)."""

    def __init__(
        self,
        agent: Any,
        env_fn: Callable[[], Env],
        agent_fn: Callable[[], Any],
        replay: Any,
        config: TrainerConfig,
        run_dir: str | Path,
        collectors: CollectorConfig,
        run_info: dict[str, Any] | None = None,
        poll_timeout_s: float = 0.05,
    ) -> None:
        streams = collectors.num_collectors * collectors.envs_per_collector
        if getattr(replay, "num_envs", streams) < streams:
            from worldflux.core.exceptions import ConfigError

            raise ConfigError(
                f"replay: needs num_envs >= {streams} (collectors x envs per collector), "
                f"got {replay.num_envs}"
            )
        super().__init__(
            agent, lambda _: env_fn(), replay, config, run_dir, run_info, lambda _: env_fn()
        )
        self.sync_module = AgentPolicy.acting_modules(agent)
        policy_fn = functools.partial(AgentPolicy, agent_fn)
        self.pool = CollectorPool(env_fn, policy_fn, collectors, weights=self.sync_module)
        self.poll_timeout_s = poll_timeout_s
        self.rows_by_version: dict[int, int] = {}  # rows received per acting policy version
        self._lag_sum, self._lag_rows = 0.0, 0  # versions behind the latest, since last log
        self._ret = np.zeros(streams)
        self._len = np.zeros(streams, np.int64)

    def train(self, stop_at: int | None = None) -> dict[str, Any]:
        """`Trainer.train` with the collectors running (stopped and cleaned up on any exit)."""
        with self.pool:
            result = super().train(stop_at)
        result["collectors"] = self.pool.stats()
        return result

    def _store_rows(self) -> None:
        self.runner.rows = []  # rows come from the collectors, not from the learner's runner

    def _env_step(self) -> None:
        t0 = time.perf_counter()
        added = 0
        track = bool(getattr(self.replay, "track_versions", False))
        for chunk in self.pool.poll(self.poll_timeout_s, copy=False):
            with chunk:  # copy out of shared memory once, then free the slot
                row_versions = chunk.policy_versions.numpy().copy()  # (E, T)
                rows_list = chunk.step_batches()
            versions, counts = np.unique(row_versions, return_counts=True)
            for v, c in zip(versions.tolist(), counts.tolist(), strict=True):
                self.rows_by_version[v] = self.rows_by_version.get(v, 0) + c
                self._lag_sum += (self.pool.version - v) * c
                self._lag_rows += c
            for t, rows in enumerate(rows_list):
                if track:
                    self.replay.add(rows, chunk.env_ids, policy_version=row_versions[:, t])
                else:  # a replay restored from a checkpoint written before versions were kept
                    self.replay.add(rows, chunk.env_ids)
                added += len(rows)
                self._log_episodes(rows, chunk.env_ids)
        if self.step >= self.config.seed_steps:
            self.credit += added * self.updates_per_step
        self.step += added
        self.profile["env"] += time.perf_counter() - t0

    def _log_episodes(self, rows: Any, env_ids: np.ndarray) -> None:
        first = np.asarray(rows.is_first)
        self._ret[env_ids] = np.where(first, 0.0, self._ret[env_ids] + rows.reward)
        self._len[env_ids] = np.where(first, 0, self._len[env_ids] + 1)
        for i in np.flatnonzero(rows.is_last):
            self.episodes += 1
            assert self.logger is not None
            stream = int(env_ids[i])
            values = {"return": float(self._ret[stream]), "length": int(self._len[stream])}
            self.logger.log(self.step, "episode", {**values, "env": stream})

    def state_tree(self) -> dict[str, Any]:
        """`Trainer.state_tree` plus the collector setup (informative; ``run.json`` rules)."""
        tree = super().state_tree()
        tree[COLLECTORS_KEY] = collector_run_info(self.pool.config)
        return tree

    def _log_profile(self) -> None:
        """Also log how stale the collected rows are and how often collectors restarted."""
        super()._log_profile()
        assert self.logger is not None
        stats = self.pool.stats()
        self.logger.log(
            self.step,
            "collectors",
            {
                "policy_version": stats["version"],
                "version_lag": self._lag_sum / max(1, self._lag_rows),
                "restarts": sum(c["restarts"] for c in stats["collectors"]),
            },
        )
        self._lag_sum, self._lag_rows = 0.0, 0

    def _learn(self) -> None:
        # N collectors spread the first rows over N x num_envs streams: wait until one stream
        # holds a full sequence (the credit earned meanwhile is dropped, not replayed later).
        counts = getattr(self.replay, "counts", None)
        if counts is not None and int(np.max(counts)) < self.agent.seq_len:
            self.credit = 0.0
            return
        before = self.updates
        super()._learn()
        every = self.pool.config.weight_sync_every
        if self.updates // every > before // every:
            self.pool.publish_weights(self.sync_module)


COLLECTORS_KEY = "collectors"  # run.json: {"num_collectors": N, "start_method": "spawn"}


def collector_run_info(config: CollectorConfig) -> dict[str, Any]:
    """What ``run.json`` records about the collectors (enough to resume with the same ones)."""
    return {"num_collectors": config.num_collectors, "start_method": config.start_method}


def load_run_file(run_dir: str | Path) -> tuple[Any, dict[str, Any] | None]:
    """(RunSpec, collector info or None) from ``run_dir/run.json``.

    None means a single-process run. (`worldflux.training.run.load_spec` does not know the
    ``collectors`` key; collector runs are read here.)
    """
    from worldflux.core.exceptions import ConfigError
    from worldflux.training.run import RUN_FILE, RunSpec

    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise ConfigError(f"run_dir: {run_dir} has no {RUN_FILE}; is it a worldflux run directory?")
    data = json.loads(path.read_text())
    info = data.pop(COLLECTORS_KEY, None)
    if isinstance(info, int):  # a bare count
        info = {"num_collectors": info}
    if info is not None and not (
        isinstance(info, dict) and int(info.get("num_collectors", 0)) >= 1
    ):
        raise ConfigError(
            f"{path}: {COLLECTORS_KEY!r} must be {{'num_collectors': N >= 1, 'start_method': ...}}"
            f", got {info!r}"
        )
    try:
        spec = RunSpec(**data)
    except TypeError as e:
        raise ConfigError(f"{path}: not a worldflux run file ({e})") from None
    return spec, info


def _write_run_file(run_dir: Path, spec: Any, collectors: CollectorConfig) -> None:
    from worldflux.training.run import RUN_FILE

    record = {**dataclasses.asdict(spec), COLLECTORS_KEY: collector_run_info(collectors)}
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2))


def build_collector_trainer(
    spec: Any,
    run_dir: str | Path,
    num_collectors: int,
    *,
    write_run_file: bool = True,
    **collector_options: Any,
) -> CollectorTrainer:
    """Like `worldflux.training.run.build_trainer`, with `num_collectors` collector processes.

    Each collector steps ``trainer.num_envs`` env copies; the replay gets one stream per copy.
    `collector_options` are further `CollectorConfig` fields (``start_method``, ``chunk_len``).
    ``run.json`` records the spec and the collectors (`write_run_file`).
    """
    from worldflux.agents import make_agent
    from worldflux.data.replay import Replay
    from worldflux.envs import make_env
    from worldflux.training.config import check_device
    from worldflux.training.run import check_new_run_dir

    if write_run_file:
        check_new_run_dir(run_dir)
    config = spec.trainer_config()
    check_device(config.device)  # before any model is moved there
    options = {"seed": config.seed, **collector_options}
    collectors = CollectorConfig(
        num_collectors=num_collectors, envs_per_collector=config.num_envs, **options
    )
    run_dir = Path(run_dir)
    info = dataclasses.asdict(spec)  # checkpoint "run": a plain RunSpec (`load_agent` reads it)
    env_fn = functools.partial(make_env, spec.env, **spec.env_kwargs)
    probe = env_fn()
    obs_space, action_space = probe.observation_space, probe.action_space
    probe.close()
    agent_fn = functools.partial(
        make_agent, spec.model, obs_space, action_space, config.seed, "cpu",
        spec.model_overrides, spec.agent,
    )  # fmt: skip
    agent = make_agent(
        spec.model, obs_space, action_space, config.seed, config.device,
        spec.model_overrides, spec.agent,
    )  # fmt: skip
    streams = num_collectors * config.num_envs
    replay = Replay(
        config.replay_capacity, obs_space, action_space, num_envs=streams, seed=config.seed,
        track_versions=True,
    )  # fmt: skip
    trainer = CollectorTrainer(agent, env_fn, agent_fn, replay, config, run_dir, collectors, info)
    # Only once everything is validated and built: a rejected command leaves no run dir.
    if write_run_file:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_run_file(run_dir, spec, collectors)
    return trainer


def resume_collector_trainer(
    run_dir: str | Path,
    num_collectors: int | None = None,
    trainer_changes: dict[str, Any] | None = None,
    **collector_options: Any,
) -> CollectorTrainer:
    """`worldflux resume RUN`: rebuild a collector run, load its checkpoint.

    `num_collectors` and ``start_method`` default to what ``run.json`` recorded. The replay in
    the checkpoint must have one stream per collector env copy, i.e. the run was trained with
    the same ``N x num_envs``; otherwise a `ConfigError` says what it holds.
    """
    from worldflux.core.exceptions import ConfigError

    spec, info = load_run_file(run_dir)
    info = info or {}
    if num_collectors is None:
        if "num_collectors" not in info:
            raise ConfigError(
                f"collectors: {run_dir} is a single-process run; pass the number of collectors"
            )
        num_collectors = int(info["num_collectors"])
    if "start_method" in info:
        collector_options.setdefault("start_method", info["start_method"])
    spec.trainer.update(trainer_changes or {})
    trainer = build_collector_trainer(
        spec, run_dir, num_collectors, write_run_file=False, **collector_options
    )
    trainer.restore()
    streams = num_collectors * trainer.config.num_envs
    if getattr(trainer.replay, "num_envs", streams) != streams:
        raise ConfigError(
            f"collectors: the checkpoint's replay has {trainer.replay.num_envs} streams, but "
            f"{num_collectors} collectors x {trainer.config.num_envs} envs make {streams}"
        )
    _write_run_file(Path(run_dir), spec, trainer.pool.config)  # only once the resume is valid
    return trainer

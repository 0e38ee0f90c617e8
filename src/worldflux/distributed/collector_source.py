"""`CollectorSource`: the `Trainer`'s env steps gathered by collector processes
(``worldflux train MODEL --env ENV --collectors N``).

- each iteration polls the pool and adds every received row to the replay (collector i's env
  copy j is replay stream ``i * envs_per_collector + j``); the credit grows per row;
- every `weight_sync_every` updates the agent's acting modules are published as a new policy
  version; the replay (``track_versions=True``) stores, per row, the version that acted it;
- collectors act with the agent from the first step (there is no uniform-random seed phase in
  the collectors; ``seed_steps`` still delays the first update, and so does waiting until one
  replay stream holds a full ``seq_len`` window), and an exact resume of the env streams is not
  possible: a resumed run restarts the collectors' episodes.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from worldflux.core.exceptions import ConfigError
from worldflux.distributed.collectors import CollectorConfig, CollectorPool
from worldflux.distributed.policies import AgentPolicy
from worldflux.envs.base import Env
from worldflux.training.sources import Source

if TYPE_CHECKING:
    from worldflux.training.trainer import Trainer


class CollectorSource(Source):
    """Rows from a `CollectorPool` of `collectors.num_collectors` processes, each stepping
    ``envs_per_collector`` envs from `env_fn()` with an agent from `agent_fn()` (both must
    pickle under ``spawn``); `agent` is the learner's, whose weights they receive."""

    def __init__(
        self,
        env_fn: Callable[[int], Env],
        agent_fn: Callable[[], Any],
        agent: Any,
        replay: Any,
        collectors: CollectorConfig,
        poll_timeout_s: float = 0.05,
    ) -> None:
        self.streams = collectors.num_collectors * collectors.envs_per_collector
        if getattr(replay, "num_envs", self.streams) < self.streams:
            raise ConfigError(
                f"replay: needs num_envs >= {self.streams} (collectors x envs per collector), "
                f"got {replay.num_envs}"
            )
        self.replay = replay
        self.sync_module = AgentPolicy.acting_modules(agent)
        policy_fn = functools.partial(AgentPolicy, agent_fn)
        self.pool = CollectorPool(env_fn, policy_fn, collectors, weights=self.sync_module)
        self.poll_timeout_s = poll_timeout_s
        self.rows_by_version: dict[int, int] = {}  # rows received per acting policy version
        self._lag_sum, self._lag_rows = 0.0, 0  # versions behind the latest, since last report
        self._ret = np.zeros(self.streams)
        self._len = np.zeros(self.streams, np.int64)

    def running(self) -> contextlib.AbstractContextManager[Any]:
        """The collectors run (and are stopped and cleaned up on any exit) inside."""
        return self.pool

    def collect(self, trainer: Trainer) -> int:
        t0 = time.perf_counter()
        added = 0
        for chunk in self.pool.poll(self.poll_timeout_s, copy=False):
            rows_list, row_versions = add_chunk(self.replay, chunk)
            self._count_versions(row_versions)
            for rows in rows_list:
                added += len(rows)
                self._episodes(trainer, rows, chunk.env_ids)
        trainer.profile["env"] += time.perf_counter() - t0
        return added

    def _count_versions(self, row_versions: np.ndarray) -> None:
        versions, counts = np.unique(row_versions, return_counts=True)
        for v, c in zip(versions.tolist(), counts.tolist(), strict=True):
            self.rows_by_version[v] = self.rows_by_version.get(v, 0) + c
            self._lag_sum += (self.pool.version - v) * c
            self._lag_rows += c

    def _episodes(self, trainer: Trainer, rows: Any, env_ids: np.ndarray) -> None:
        first = np.asarray(rows.is_first)
        self._ret[env_ids] = np.where(first, 0.0, self._ret[env_ids] + rows.reward)
        self._len[env_ids] = np.where(first, 0, self._len[env_ids] + 1)
        for i in np.flatnonzero(rows.is_last):
            stream = int(env_ids[i])
            ret, length = float(self._ret[stream]), int(self._len[stream])
            trainer.record_episode(trainer.step, stream, ret, length)

    def ready(self, seq_len: int) -> bool:
        # N collectors spread the first rows over N x envs streams: wait until one stream
        # holds a full sequence (the credit earned meanwhile is dropped, not replayed later).
        counts = getattr(self.replay, "counts", None)
        return counts is None or int(np.max(counts)) >= seq_len

    def after_learn(self, trainer: Trainer, updates_before: int) -> None:
        every = self.pool.config.weight_sync_every
        if trainer.updates // every > updates_before // every:
            self.pool.publish_weights(self.sync_module)

    def reports(self) -> dict[str, dict[str, float]]:
        """How stale the collected rows are and how often collectors restarted."""
        stats = self.pool.stats()
        values = {
            "policy_version": float(stats["version"]),
            "version_lag": self._lag_sum / max(1, self._lag_rows),
            "restarts": float(sum(c["restarts"] for c in stats["collectors"])),
        }
        self._lag_sum, self._lag_rows = 0.0, 0
        return {"collectors": values}

    def summary(self) -> dict[str, Any]:
        return {"collectors": self.pool.stats()}

    def state_dict(self) -> dict[str, Any]:
        return {"replay_rng": self.replay.get_state(), "collectors": self.run_info()}

    def run_info(self) -> dict[str, Any]:
        """What ``run.json`` records about the collectors (enough to resume with the same ones)."""
        config = self.pool.config
        return {"num_collectors": config.num_collectors, "start_method": config.start_method}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        del device
        if state["replay_saved"]:
            self.replay = state["replay"]
            if getattr(self.replay, "num_envs", self.streams) != self.streams:
                raise ConfigError(
                    f"collectors: the checkpoint's replay has {self.replay.num_envs} streams, "
                    f"but {self.pool.config.num_collectors} collectors x "
                    f"{self.pool.config.envs_per_collector} envs make {self.streams}"
                )
        self.replay.set_state(state["replay_rng"])

    def close(self) -> None:
        self.pool.close()


def add_chunk(replay: Any, chunk: Any) -> tuple[list[Any], np.ndarray]:
    """Add a received `Chunk`'s rows to `replay` (collector i's env copy j is stream
    ``i * envs_per_collector + j``; with ``track_versions`` each row's policy version too),
    copying them out of shared memory once and freeing the slot. -> (the rows of each time
    step, their policy versions (E, T))."""
    with chunk:
        versions = chunk.policy_versions.numpy().copy()  # (E, T)
        rows_list = chunk.step_batches()
    track = bool(getattr(replay, "track_versions", False))
    for t, rows in enumerate(rows_list):
        if track:
            replay.add(rows, chunk.env_ids, policy_version=versions[:, t])
        else:  # a replay restored from a checkpoint written before versions were kept
            replay.add(rows, chunk.env_ids)
    return rows_list, versions


def collector_source(
    config: Any,
    tc: Any,
    agent: Any,
    spaces: tuple[Any, Any],
    num_collectors: int,
    options: dict[str, Any],
    replay_dir: Any = None,
) -> CollectorSource:
    """The `CollectorSource` of a run (`worldflux.training.run.build_trainer`): collectors
    of ``tc.num_envs`` env copies each, agents built on CPU, a version-tracking replay with one
    stream per copy. `options` are `CollectorConfig` fields (``seed``, ``start_method``, ...)."""
    from worldflux.agents import make_agent
    from worldflux.training.run import env_factory, make_replay

    collectors = CollectorConfig(
        num_collectors=num_collectors, envs_per_collector=tc.num_envs, **options
    )
    env_fn = env_factory(config)
    agent_fn = functools.partial(
        make_agent, config.model_name, *spaces, tc.seed, "cpu", config.model_options(),
        config.agent,
    )  # fmt: skip
    streams = num_collectors * tc.num_envs
    replay = make_replay(
        tc, spaces, streams, collectors.seed, track_versions=True, directory=replay_dir
    )
    return CollectorSource(env_fn, agent_fn, agent, replay, collectors)

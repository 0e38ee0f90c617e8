"""`Trainer`: the one training loop. Each iteration gathers data from a *source*, makes the
updates the train-ratio credit allows, evaluates, logs and checkpoints; a *sync* strategy says
how this process trains together with others. Both are objects handed to it:

- sources (`worldflux.training.sources`): `EnvSource` (envs stepped here), `OfflineSource` (a
  recorded dataset or a saved replay; the step counter then counts updates) and
  `worldflux.distributed.collector_source.CollectorSource` (collector processes);
- sync (`worldflux.training.sync`): `LocalSync` (one process) or
  `worldflux.distributed.data_parallel.DataParallel` (``torch.distributed`` ranks).

World-model pretraining is the offline source under data-parallel sync. `worldflux.training.run`
builds trainers from a `RunConfig` (``worldflux train``) and resumes them from run dirs.

Train ratio: replayed env steps per env step, the unit DreamerV3 uses. One update replays
``batch_size * seq_len`` steps, so updates per env step = ``train_ratio / (batch_size * seq_len)``
(over all ranks: each rank samples its share of the global batch). `TrainerConfig.updates_per_step`
sets that number directly (TD-MPC2's unit: 1 update per step). Fractional rates are exact: an
update credit accumulates across steps (and is checkpointed).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worldflux.agents.base import Agent
from worldflux.core.exceptions import TrainingError
from worldflux.training.checkpoint import CheckpointError, CheckpointManager, capture_rng
from worldflux.training.config import TrainerConfig, seed_everything, setup_runtime
from worldflux.training.eval_stop import evaluate_or_defer
from worldflux.training.evaluate import evaluate
from worldflux.training.log_backends import require_wandb, wandb_options
from worldflux.training.logging import Logger, truncate_metrics
from worldflux.training.restore import check_same_run, restore_stream
from worldflux.training.signals import DeferredStop, stop_report
from worldflux.training.skips import SkipCounter
from worldflux.training.sources import Source
from worldflux.training.sync import LocalSync, Sync
from worldflux.training.video_recorder import video_recorder

EnvFn = Any  # index -> a `worldflux.envs.Env` (see `worldflux.training.runner.EnvFn`)


class Trainer:
    """Trains `agent` on the data of `source`, synchronised by `sync` (default: `LocalSync`),
    writing metrics and checkpoints into `run_dir`.

    `eval_env_fn(i)` builds evaluation envs (None: no evaluation env, so `eval_every` must be
    0). `run_info` (the run's `RunConfig` as a dict) goes into every checkpoint; `restore`
    refuses a checkpoint of another model. `video_env_fn(i)` builds envs that render, for the
    videos every `config.video_every` steps (None: `eval_env_fn`'s; see `VideoRecorder`).
    """

    def __init__(
        self,
        agent: Agent,
        source: Source,
        config: TrainerConfig,
        run_dir: str | Path,
        *,
        sync: Sync | None = None,
        eval_env_fn: EnvFn | None = None,
        run_info: dict[str, Any] | None = None,
        video_env_fn: EnvFn | None = None,
    ) -> None:
        self.config = config
        self.sync: Sync = sync or LocalSync()
        self.device = setup_runtime(config.threads, config.device)
        seed_everything(self.sync.stream_seed(config.seed))
        self.agent, self.source = agent, source
        self.run_dir = Path(run_dir)
        main = self.sync.is_main
        self.log_dir = self.run_dir if main else self.run_dir / "ranks" / f"rank{self.sync.rank}"
        self.run_info = run_info or {}
        self.eval_env_fn = eval_env_fn
        self.videos = (  # on the main process, every `config.video_every` steps
            video_recorder(config.video_every, config.seed, eval_env_fn, video_env_fn, run_dir)
            if self.sync.is_main
            else None
        )
        if config.wandb and self.sync.is_main:
            require_wandb()  # a missing package fails here, before any training
        self.checkpoints = CheckpointManager(self.run_dir, config.keep_checkpoints)
        # a resumed disk-backed replay is read into the live one's files, not into RAM
        self.checkpoints.replay_dir = getattr(source.replay, "directory", None)
        self.step = 0
        self.updates = 0
        self.credit = 0.0
        self.episodes = 0
        self.skips = SkipCounter(config.max_nonfinite)  # skipped updates, on the device
        self.learn_from = 0  # no updates before this env step (refill after a replay-less resume)
        self.profile = {"env": 0.0, "act": 0.0, "sample": 0.0, "update": 0.0, "eval": 0.0}
        self.logger: Logger | None = None
        self._partial = False  # inside a training iteration (a checkpoint now is not exact)
        self._pending: int | None = None  # a stop cut this iteration's updates: its start step
        self._stop: DeferredStop | None = None
        self.sync.start(agent)

    def close(self) -> None:
        """Release the source's envs, env workers and collectors; the agent stays usable."""
        self.source.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def replay(self) -> Any:
        """The replay the updates sample (None for offline data)."""
        return self.source.replay

    @property
    def updates_per_step(self) -> float:
        if self.source.counts_updates:
            return 1.0
        if self.config.updates_per_step is not None:
            return float(self.config.updates_per_step)
        ratio = self.config.train_ratio or self.agent.default_train_ratio
        return ratio / (self.agent.replayed_per_update * self.sync.world_size)

    # --- the loop -----------------------------------------------------------------------------

    def train(self, stop_at: int | None = None) -> dict[str, Any]:
        """Run until `config.steps` steps (or `stop_at`, then checkpoint and return).

        Ctrl-C (SIGINT) and SIGTERM save a checkpoint and raise `KeyboardInterrupt` (SIGTERM:
        its subclass `Terminated`). In the main thread the signal waits for the end of the
        iteration, or stops its updates (within 16) or its evaluation (at the next env step),
        leaving the rest to the resumed run, so that checkpoint is exact (a second signal stops
        at once, still saving). An interrupt or any other exception in the middle of an
        iteration is saved as a *partial* checkpoint: resuming it starts fresh episodes in every
        env (like a resume without replay, see `restore`), not bit-exact. The exception is then
        re-raised, after a line on stderr with the checkpoint and the ``worldflux resume``
        command.
        """
        end = min(self.config.steps, stop_at) if stop_at is not None else self.config.steps
        main, c = self.sync.is_main, self.config
        wandb = wandb_options(c, self.run_info) if c.wandb and main else None
        tb, progress = c.tensorboard and main, c.progress and main
        self.logger = Logger(self.log_dir, c.steps, tb, progress, wandb)
        last_eval: dict[str, Any] | None = None
        self._partial = False
        stop = self._stop = DeferredStop()
        try:
            with self.source.running(), self.sync.active(), stop:
                if self._pending is not None:  # first the updates a stop cut short
                    last_eval = self._finish(self._pending, end)
                while self.step < end or self._pending is not None:
                    if self.sync.any(stop.requested is not None):
                        stop.stop()
                    last_eval = self._iteration(end) or last_eval
                self.save()
                if stop.requested is not None:
                    stop.stop()
        except (KeyboardInterrupt, Exception) as err:
            self._save_on_exit(err)
            raise
        finally:
            self._partial = False
            self.logger.close()
            self.logger = None
        return {
            "step": self.step,
            "updates": self.updates,
            "episodes": self.episodes,
            "nonfinite": self.skips.total,
            "eval": last_eval,
            "run_dir": str(self.run_dir),
            **self.source.summary(),
        }

    def _iteration(self, end: int) -> dict[str, Any] | None:
        """Collect, learn, then evaluate / log / checkpoint where their intervals end."""
        assert self.logger is not None
        self._partial = True
        prev = self.step
        stepped = self.source.collect(self)
        self._earn(stepped)
        self.step += stepped
        return self._finish(prev, end)

    def _finish(self, prev: int, end: int) -> dict[str, Any] | None:
        """The iteration from `prev` after its collection: learn, then evaluate / log /
        checkpoint where their intervals end. A stop during the updates leaves the rest to the
        resumed run (`_pending`, saved with the counters), so an update burst ends promptly."""
        assert self.logger is not None
        self._pending = prev
        if not self._learn():
            self._partial = False  # between two updates: a checkpoint here resumes exactly
            return None
        result = None
        if self._crossed(prev, self.config.eval_every):
            stop = self._stop if self.sync.world_size == 1 else None  # ranks stop together
            result = evaluate_or_defer(self.run_eval, self.agent, stop)
            if result is None:  # a stop cut the eval short: the resumed run redoes it
                self._partial = False
                return None
        self._pending = None
        if self._crossed(prev, self.config.log_every):
            self._log_profile()
        if self.videos is not None and self._crossed(prev, self.config.video_every):
            t0 = time.perf_counter()
            self.videos.record(self.agent, self.step, self.logger, self.device)
            self.profile["eval"] += time.perf_counter() - t0
        self._partial = False  # the iteration's state is complete
        if self._crossed(prev, self.config.checkpoint_every) and self.step < end:
            self.save()
        self.logger.progress(self.step, self.updates)
        return result

    def _earn(self, stepped: int) -> None:
        """Update credit for `stepped` new steps: one update per offline step; online, none
        during the seed steps (or a refill), then `updates_per_step` per env step, except that
        the iteration ending the seed steps makes `seed_updates` (TD-MPC2's burst on the seed
        data) when that is more."""
        if self.source.counts_updates:
            self.credit += stepped
            return
        seeds = self.config.seed_steps
        if self.step < max(seeds, self.learn_from):
            return
        earned = stepped * self.updates_per_step
        if self.config.seed_updates and seeds <= self.step < seeds + stepped:
            earned = max(earned, float(self.config.seed_updates))
        self.credit += earned

    def _crossed(self, prev: int, every: int) -> bool:
        return every > 0 and prev // every != self.step // every

    def _learn(self) -> bool:
        """Spend the update credit; False when a stop (checked every 16 updates, on every rank
        at once) cut it short: the credit left is the resumed run's."""
        if not self.source.ready(self.agent.seq_len):
            self.credit = 0.0  # e.g. no collector stream holds a full sequence yet
            return True
        before, stop = self.updates, self._stop
        while self.credit >= 1.0:
            if stop and self.updates % 16 == 0 and self.sync.any(stop.requested is not None):
                return False
            self.credit -= 1.0
            t0 = time.perf_counter()
            batch = self.source.sample(self.agent, self.device)
            t1 = time.perf_counter()
            metrics = self.agent.update(batch)
            self.sync.after_update(self.agent)
            self.profile["sample"] += t1 - t0
            self.profile["update"] += time.perf_counter() - t1
            self.updates += 1
            self._check_finite(metrics)
            if self.updates % max(1, int(self.config.log_every * self.updates_per_step)) == 0:
                self._log_train(metrics)
        self.source.after_learn(self, before)
        return True

    def _log_train(self, metrics: dict[str, Any]) -> None:
        reduced = self.sync.reduce_metrics(metrics)  # rank means; None where nothing is logged
        if reduced is not None:
            assert self.logger is not None
            self.logger.log(self.step, "train", {**reduced, "updates": self.updates})

    def _check_finite(self, metrics: dict[str, Any]) -> None:
        """Count a skipped update on the device; read the counts (a sync) every 16 updates and
        at each logged one, raising after `max_nonfinite` skips in a row."""
        self.skips.add(metrics.get("nonfinite", 0.0))
        if not self.updates % min(16, max(1, int(self.config.log_every * self.updates_per_step))):
            self.skips.raise_on_streak(self.skips.read(), self.updates, self.step)

    def record_episode(self, step: int, env_id: int, ret: float, length: int) -> None:
        """A source reports a finished episode (logged at `step`, counted in `episodes`)."""
        self.episodes += 1
        assert self.logger is not None
        self.logger.log(step, "episode", {"return": ret, "length": length, "env": env_id})

    def run_eval(
        self, video: str | Path | None = None, stop: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """Evaluate now over `config.eval_episodes` episodes; logs kind "eval". Only the main
        process evaluates (the replicas are identical); others return {}. `stop`: see
        `evaluate` (raises `EvalStoppedError`)."""
        if not self.sync.is_main:
            return {}
        if self.eval_env_fn is None:
            raise TrainingError("run_eval: this trainer has no evaluation env (eval_env_fn)")
        t0 = time.perf_counter()
        result = evaluate(
            self.agent,
            self.eval_env_fn,
            self.config.eval_episodes,
            self.config.seed,
            self.device,
            video,
            stop=stop,
        )
        self.profile["eval"] += time.perf_counter() - t0
        self.source.after_eval()
        if self.logger is not None:
            self.logger.log(
                self.step, "eval", {k: v for k, v in result.items() if not isinstance(v, list)}
            )
        return result

    def _log_profile(self) -> None:
        assert self.logger is not None
        self.logger.log(self.step, "profile", {f"{k}_s": v for k, v in self.profile.items()})
        for kind, values in self.source.reports().items():
            self.logger.log(self.step, kind, values)

    # --- checkpoints --------------------------------------------------------------------------

    def stream_tree(self) -> dict[str, Any]:
        """What only this process knows: its source's stream state, RNGs, the agent's extra
        state (under data-parallel sync, one of these per rank goes into each checkpoint)."""
        return {
            **self.source.state_dict(),
            "counters": {"learn_from": self.learn_from, "episodes": self.episodes},
            "rng": capture_rng(),
            "agent_extra": self.agent.extra_state(),
            "partial_step": self._partial,
            "replay_saved": self.config.save_replay and self.replay is not None,
            "rank": self.sync.rank,
        }

    def state_tree(self) -> dict[str, Any]:
        """Everything needed to continue exactly (this process's view of the run)."""
        from worldflux.agents.io import agent_specs

        tree = self.stream_tree()
        del tree["agent_extra"]  # inside "agent"
        counters = {"step": self.step, "updates": self.updates, "credit": self.credit,
                    "episodes": self.episodes, "nonfinite_total": self.skips.total,
                    "nonfinite_streak": self.skips.streak,
                    "learn_from": self.learn_from, "pending": self._pending}  # fmt: skip
        return {
            **tree,
            "run": self.run_info,
            "trainer_config": self.config.to_dict(),
            "counters": counters,
            "agent": self.agent.state_dict(),
            "specs": agent_specs(self.agent),
            "profile": dict(self.profile),
            "world_size": self.sync.world_size,
        }

    def save(self) -> Path:
        """Checkpoint everything needed to continue exactly; returns the directory."""
        replay = self.replay if self.config.save_replay else None
        ago = self.skips.read()  # every rank: exact skip counts for the checkpoint
        trees = self.state_tree, self.stream_tree
        path = self.sync.save(self.checkpoints, self.step, *trees, replay)
        # a streak seen here stops the run after its checkpoint
        self.skips.raise_on_streak(ago, self.updates, self.step)
        return path

    def _save_on_exit(self, err: BaseException) -> None:
        """Checkpoint what the stopped run has done (unless nothing has completed since the last
        checkpoint), then say on stderr where it is and how to continue."""
        here = self.checkpoints.path_for(self.step)
        path: Path | None
        # Only an agreed stop leaves every rank at the same point, ready for a collective save.
        in_step = self._partial and self.sync.world_size > 1
        if isinstance(err, CheckpointError) or in_step:
            path, saved = self.checkpoints.latest(), ""  # saving itself failed, or ranks differ
        elif here in self.checkpoints.list():
            # written at the end of the iteration that reached this step (or resumed from):
            # nothing has completed since, so it is the right one to keep
            path, saved = here, "checkpoint"
        else:
            try:
                path, saved = self.save(), "partial checkpoint" if self._partial else "checkpoint"
            except Exception as save_err:  # noqa: BLE001 - report it, re-raise the first error
                print(f"could not save a checkpoint: {save_err}", file=sys.stderr)
                path, saved = self.checkpoints.latest(), ""
        print(stop_report(err, self.step, path, saved, self.run_dir), file=sys.stderr)

    def restore(self, path: str | Path | None = None) -> None:
        """Load a checkpoint (default: the newest intact one in `run_dir`) into this trainer.

        A checkpoint of another model than this run's is a one-line `CheckpointError` naming
        both. From an exact checkpoint the run continues bit for bit; without a saved replay
        (or from a partial checkpoint) every env starts a fresh episode, and without a replay
        updates pause until it has been refilled (see `restore.restore_stream`).
        """
        where, tree, stream = self.sync.load(self.checkpoints, None if path is None else Path(path))
        check_same_run(tree, self.run_info, where)
        c = tree["counters"]
        self.step, self.updates, self.credit = c["step"], c["updates"], c["credit"]
        self.episodes, limit = c["episodes"], self.config.max_nonfinite
        self.skips = SkipCounter(limit, c["nonfinite_total"], c["nonfinite_streak"])
        self._pending = c.get("pending")  # the step an interrupted iteration started from
        self.profile.update(tree.get("profile", {}))
        self.agent.load_state_dict(tree["agent"])
        truncate_metrics(self.log_dir, self.step)
        restore_stream(self, stream, where)
        self.learn_from = int(self.sync.max(self.learn_from))  # every rank waits for the slowest
        self.sync.resumed(where)

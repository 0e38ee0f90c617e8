"""`Trainer`: the online loop (act, step envs, store rows, replay updates, evaluate, checkpoint)
and the offline loop (updates from a fixed dataset: `TrainerConfig.dataset`; `steps` then counts
updates, sampled with the trainer's seeded generator, and evaluation still uses the real env).

Train ratio: replayed env steps per env step, the unit DreamerV3 uses. One update replays
``batch_size * seq_len`` steps, so updates per env step = ``train_ratio / (batch_size * seq_len)``.
`TrainerConfig.updates_per_step` sets that number directly (TD-MPC2's unit: 1 update per step).
Fractional rates are exact: an update credit accumulates across steps (and is checkpointed).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldflux.agents.base import Agent
from worldflux.core.exceptions import ConfigError, WorldFluxError
from worldflux.core.state import State
from worldflux.training.checkpoint import (
    CheckpointError,
    CheckpointManager,
    capture_rng,
    load_checkpoint,
    restore_rng,
)
from worldflux.training.config import TrainerConfig, seed_everything, setup_runtime
from worldflux.training.evaluate import check_goal_envs, evaluate, goal_observations
from worldflux.training.logging import Logger, truncate_metrics
from worldflux.training.runner import EnvFn, EnvRunner, random_actions
from worldflux.training.signals import DeferredStop, stop_report


class TrainingError(WorldFluxError, RuntimeError):
    """The run cannot continue (e.g. repeated NaN/Inf losses or gradients)."""


class Trainer:
    """Drives `agent` on envs from `env_fn(i)` with `replay`; writes into `run_dir`.

    `replay` is a `worldflux.data.Replay` (or anything with its ``add``, ``sample``, ``save``,
    classmethod ``load`` and ``get_state``/``set_state``).
    """

    def __init__(
        self,
        agent: Agent,
        env_fn: EnvFn,
        replay: Any,
        config: TrainerConfig,
        run_dir: str | Path,
        run_info: dict[str, Any] | None = None,
        eval_env_fn: EnvFn | None = None,
    ) -> None:
        self.config = config
        self.device = setup_runtime(config.threads, config.device)
        seed_everything(config.seed)
        self.agent, self.replay = agent, replay
        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir  # metrics.jsonl and tb/ (data-parallel ranks > 0: their own)
        self.world_size = 1  # ranks stepping envs in lockstep (see distributed.online)
        self.run_info = run_info or {}
        self.env_fn = env_fn
        self.eval_env_fn = eval_env_fn or env_fn
        self.runner = EnvRunner(env_fn, config.num_envs, config.seed)
        self.rng = np.random.default_rng(config.seed)  # random actions during seed steps
        self.checkpoints = CheckpointManager(self.run_dir, config.keep_checkpoints)
        self.step = 0
        self.updates = 0
        self.credit = 0.0
        self.episodes = 0
        self.nonfinite_total = 0
        self.nonfinite_streak = 0
        self.learn_from = 0  # no updates before this env step (refill after a replay-less resume)
        self.act_state: State | None = None
        self.profile = {"env": 0.0, "act": 0.0, "sample": 0.0, "update": 0.0, "eval": 0.0}
        self.logger: Logger | None = None
        self.dataset: Any = None  # offline mode's OfflineDataset
        if config.dataset is not None:
            from worldflux.data.offline import OfflineDataset

            try:
                self.dataset = OfflineDataset(config.dataset)
            except WorldFluxError as err:
                raise ConfigError(f"dataset: cannot open {config.dataset!r}: {err}") from err
        # Goal-conditioned agents (JEPA) plan toward each training env's goal observation.
        self.goal_conditioned = hasattr(agent, "set_goal")
        self.goals_stale = True
        self._partial = False  # inside a training iteration (a checkpoint now is not exact)
        needs_goals = config.dataset is None or config.eval_every > 0
        if self.goal_conditioned and needs_goals:
            self._check_goal_envs(type(agent).__name__)

    def _check_goal_envs(self, name: str) -> None:
        try:
            check_goal_envs(self.runner.envs, name, online=self.config.dataset is None)
        except ConfigError:
            self.runner.close()
            raise

    @property
    def updates_per_step(self) -> float:
        if self.config.updates_per_step is not None:
            return float(self.config.updates_per_step)
        ratio = self.config.train_ratio or self.agent.default_train_ratio
        return ratio / (self.agent.replayed_per_update * self.world_size)

    # --- the online loop ----------------------------------------------------------------------

    def train(self, stop_at: int | None = None) -> dict[str, Any]:
        """Run until `config.steps` env steps (or `stop_at`, then checkpoint and return).

        Ctrl-C (SIGINT) and SIGTERM save a checkpoint and raise `KeyboardInterrupt` (SIGTERM:
        its subclass `Terminated`). In the main thread the signal is deferred to the end of the
        current iteration, so that checkpoint is exact (a second signal stops at once, still
        saving). An interrupt or any other exception in the middle of an iteration is saved as
        a *partial* checkpoint: resuming it starts fresh episodes in every env (like a resume
        without replay, see `restore`), not bit-exact. The exception is then re-raised, after a
        line on stderr with the checkpoint and the ``worldflux resume`` command.
        """
        end = min(self.config.steps, stop_at) if stop_at is not None else self.config.steps
        self.logger = self._make_logger()
        self._store_rows()
        last_eval: dict[str, Any] | None = None
        self._partial = False
        stop = DeferredStop()
        try:
            with stop:
                while self.step < end:
                    self._partial = True
                    prev = self.step
                    if self.config.dataset is None:
                        self._env_step()
                        self._learn()
                    else:
                        self._offline_update()
                    if self._crossed(prev, self.config.eval_every):
                        last_eval = self.run_eval()
                    if self._crossed(prev, self.config.log_every):
                        self._log_profile()
                    self._partial = False  # the iteration's state is complete
                    if self._crossed(prev, self.config.checkpoint_every) and self.step < end:
                        self.save()
                    self.logger.progress(self.step, self.updates)
                    if self._stop_requested(stop.requested is not None):
                        stop.stop()
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
            "nonfinite": self.nonfinite_total,
            "eval": last_eval,
            "run_dir": str(self.run_dir),
        }

    def _save_on_exit(self, err: BaseException) -> None:
        """Checkpoint what the stopped run has done (unless nothing has completed since the last
        checkpoint), then say on stderr where it is and how to continue."""
        here = self.checkpoints.path_for(self.step)
        path: Path | None
        if isinstance(err, CheckpointError) or not self._may_save_on_interrupt():
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

    def _make_logger(self) -> Logger:
        return Logger(
            self.log_dir, self.config.steps, self.config.tensorboard, self.config.progress
        )

    def _stop_requested(self, requested: bool) -> bool:
        """Whether to stop after this iteration (data-parallel ranks agree on it)."""
        return requested

    def _may_save_on_interrupt(self) -> bool:
        """Whether an interrupted run writes a checkpoint on its way out."""
        return True

    def _offline_update(self) -> None:
        """Offline mode: one update on a dataset batch; the step counter counts updates."""
        t0 = time.perf_counter()
        batch = self.dataset.sample(self.agent.batch_size, self.agent.seq_len, self.rng)
        batch = batch.to(self.device)
        t1 = time.perf_counter()
        metrics = self._update(batch)
        self.profile["sample"] += t1 - t0
        self.profile["update"] += time.perf_counter() - t1
        self.step += 1
        self.updates += 1
        self._check_finite(metrics)
        if self._crossed(self.step - 1, self.config.log_every):
            self._log_train(metrics)

    def _crossed(self, prev: int, every: int) -> bool:
        return every > 0 and prev // every != self.step // every

    def _env_step(self) -> None:
        t0 = time.perf_counter()
        n = self.runner.num_envs
        stepped = n * self.world_size  # env steps this iteration, over all ranks
        if self.step < self.config.seed_steps:
            actions = random_actions(self.runner.action_spec, n, self.rng)
        else:
            if self.goal_conditioned and self.goals_stale:
                self._set_goals()
            obs = self.runner.obs_tensors(self.device)
            is_first = torch.from_numpy(self.runner.is_first.copy()).to(self.device)
            with torch.no_grad():
                action, self.act_state = self.agent.act(
                    obs, self.act_state, explore=True, is_first=is_first
                )
            actions = action.detach().cpu().numpy().astype(np.float32)
        t1 = time.perf_counter()
        for env_id, ret, length in self.runner.step(actions):
            self.episodes += 1
            self.goals_stale = True  # a new episode: a new goal
            assert self.logger is not None
            self.logger.log(
                self.step + stepped, "episode", {"return": ret, "length": length, "env": env_id}
            )
        self._store_rows()
        if self.step >= max(self.config.seed_steps, self.learn_from):  # the agent's own steps
            self.credit += self._earned(stepped)
        self.step += stepped
        t2 = time.perf_counter()
        self.profile["act"] += t1 - t0
        self.profile["env"] += t2 - t1

    def _earned(self, stepped: int) -> float:
        """Update credit of an iteration of `stepped` env steps; the first after seeding makes
        `seed_updates` (TD-MPC2's burst on the seed data) when that is more."""
        earned = stepped * self.updates_per_step
        seeds = self.config.seed_steps
        if self.config.seed_updates and seeds <= self.step < seeds + stepped:
            earned = max(earned, float(self.config.seed_updates))
        return earned

    def _set_goals(self) -> None:
        """Give a goal-conditioned agent the current goal observation of every training env."""
        goals = torch.from_numpy(goal_observations(self.runner.envs))  # checked in __init__
        self.agent.set_goal(goals.to(self.device))  # type: ignore[attr-defined]
        self.goals_stale = False

    def _store_rows(self) -> None:
        for env_id, row in self.runner.rows:
            self.replay.add(row, env_id)
        self.runner.rows = []

    def _learn(self) -> None:
        while self.credit >= 1.0:
            self.credit -= 1.0
            t0 = time.perf_counter()
            batch = self.replay.sample(
                self.agent.batch_size,
                self.agent.seq_len,
                within_episode=self.agent.within_episode,
                device=self.device,
            )
            t1 = time.perf_counter()
            metrics = self._update(batch)
            self.profile["sample"] += t1 - t0
            self.profile["update"] += time.perf_counter() - t1
            self.updates += 1
            self._check_finite(metrics)
            if self.updates % self._updates_per_log() == 0:
                self._log_train(metrics)

    def _update(self, batch: Any) -> dict[str, Any]:
        return self.agent.update(batch)

    def _log_train(self, metrics: dict[str, Any]) -> None:
        assert self.logger is not None
        self.logger.log(self.step, "train", {**metrics, "updates": self.updates})

    def _updates_per_log(self) -> int:
        return max(1, int(self.config.log_every * self.updates_per_step))

    def _check_finite(self, metrics: dict[str, Any]) -> None:
        bad = float(metrics.get("nonfinite", 0.0)) > 0
        if not bad:
            self.nonfinite_streak = 0
            return
        self.nonfinite_total += 1
        self.nonfinite_streak += 1
        if self.nonfinite_streak >= self.config.max_nonfinite:
            raise TrainingError(
                f"{self.nonfinite_streak} consecutive updates had NaN/Inf losses or gradients "
                f"(at env step {self.step}, update {self.updates}); they were skipped, the "
                f"weights are the last finite ones. Lower the learning rate or check the data."
            )

    def run_eval(self, video: str | Path | None = None) -> dict[str, Any]:
        """Evaluate now over `config.eval_episodes` episodes; logs kind "eval"."""
        t0 = time.perf_counter()
        result = evaluate(
            self.agent,
            self.eval_env_fn,
            self.config.eval_episodes,
            self.config.seed,
            self.device,
            video,
        )
        self.profile["eval"] += time.perf_counter() - t0
        self.goals_stale = True  # evaluation gave the agent the eval env's goal
        if self.logger is not None:
            self.logger.log(
                self.step, "eval", {k: v for k, v in result.items() if not isinstance(v, list)}
            )
        return result

    def _log_profile(self) -> None:
        assert self.logger is not None
        self.logger.log(self.step, "profile", {f"{k}_s": v for k, v in self.profile.items()})

    # --- checkpoints --------------------------------------------------------------------------

    def state_tree(self) -> dict[str, Any]:
        act = None if self.act_state is None else {"tensors": self.act_state.tensors}
        return {
            "run": self.run_info,
            "trainer_config": self.config.to_dict(),
            "counters": {
                "step": self.step,
                "updates": self.updates,
                "credit": self.credit,
                "episodes": self.episodes,
                "nonfinite_total": self.nonfinite_total,
                "nonfinite_streak": self.nonfinite_streak,
                "learn_from": self.learn_from,
            },
            "agent": self.agent.state_dict(),
            "act_state": act,
            "runner": self.runner.state_dict(),
            "rng": capture_rng(),
            "trainer_rng": self.rng.bit_generator.state,
            "profile": dict(self.profile),
            "replay_saved": self.config.save_replay,
            "partial_step": self._partial,
            "goals_stale": self.goals_stale,
            "replay_rng": self.replay.get_state(),
        }

    def save(self) -> Path:
        """Checkpoint everything needed to continue exactly; returns the directory."""
        replay = self.replay if self.config.save_replay else None
        return self.checkpoints.save(self.step, self.state_tree(), replay=replay)

    def restore(self, path: str | Path | None = None) -> None:
        """Load a checkpoint (default: the newest intact one in `run_dir`) into this trainer."""
        if path is None:  # damaged newer ones are skipped, with a notice
            path, tree = self.checkpoints.load_latest(with_replay=True, sweep=True)
        else:
            path, tree = Path(path), load_checkpoint(path, with_replay=True)
        c = tree["counters"]
        self.step, self.updates, self.credit = c["step"], c["updates"], c["credit"]
        self.episodes, self.nonfinite_total = c["episodes"], c["nonfinite_total"]
        self.nonfinite_streak = c["nonfinite_streak"]
        self.profile.update(tree.get("profile", {}))
        self.agent.load_state_dict(tree["agent"])
        truncate_metrics(self.log_dir, self.step)
        self._restore_streams(tree, path)

    def _restore_streams(self, tree: dict[str, Any], path: Path) -> None:
        """The envs, acting state, replay and RNGs saved in `tree` (replay under `path`)."""
        self.learn_from = int(tree["counters"].get("learn_from", 0))
        self.goals_stale = bool(tree.get("goals_stale", True))
        act = tree["act_state"]
        self.act_state = (
            None
            if act is None
            else State({k: v.to(self.device) for k, v in act["tensors"].items()})
        )
        partial = bool(tree.get("partial_step", False))
        if tree["replay_saved"]:
            if not partial:
                self.runner.load_state_dict(tree["runner"])
            loaded = tree.get("replay")  # verified with the checkpoint (not in rank shards)
            self.replay = loaded if loaded is not None else type(self.replay).load(path / "replay")
        self.replay.set_state(tree["replay_rng"])
        restore_rng(tree["rng"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = tree["trainer_rng"]
        if not tree["replay_saved"] or partial:
            self._restart_episodes(refill=not tree["replay_saved"])

    def _restart_episodes(self, refill: bool) -> None:
        """Resume without a saved replay (or from a partial checkpoint): the replay is empty, so
        the envs cannot continue their episodes (each replay stream must begin with a reset row).
        Every env starts a fresh episode, seeded from the restored trainer RNG (deterministic,
        but not the episode the interrupted run was in). With `refill`, updates pause until the
        replay has been refilled for `seed_steps` env steps (at least `seq_len` per env), acting
        with the restored agent.
        """
        n = self.runner.num_envs
        seeds = self.rng.integers(0, 2**31 - 1, size=n)
        self.runner.restart([int(s) for s in seeds])
        self.act_state = None
        self.goals_stale = True
        if refill:
            stream = n * self.world_size * self.agent.seq_len  # seq_len rows in every stream
            self.learn_from = self.step + max(self.config.seed_steps, stream)

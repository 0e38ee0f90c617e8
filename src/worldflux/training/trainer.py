"""`Trainer`: the online loop (act, step envs, store rows, replay updates, evaluate, checkpoint)
and the offline loop (updates from a fixed dataset: `TrainerConfig.dataset`; `steps` then counts
updates, sampled with the trainer's seeded generator, and evaluation still uses the real env).

Train ratio: replayed env steps per env step, the unit DreamerV3 uses. One update replays
``batch_size * seq_len`` steps, so updates per env step = ``train_ratio / (batch_size * seq_len)``.
`TrainerConfig.updates_per_step` sets that number directly (TD-MPC2's unit: 1 update per step).
Fractional rates are exact: an update credit accumulates across steps (and is checkpointed).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldflux.agents.base import Agent
from worldflux.core.exceptions import WorldFluxError
from worldflux.core.state import State
from worldflux.training.checkpoint import (
    CheckpointError,
    CheckpointManager,
    capture_rng,
    load_checkpoint,
    restore_rng,
)
from worldflux.training.config import TrainerConfig, setup_runtime
from worldflux.training.evaluate import evaluate
from worldflux.training.logging import Logger, truncate_metrics
from worldflux.training.runner import EnvFn, EnvRunner, random_actions


class TrainingError(WorldFluxError, RuntimeError):
    """The run cannot continue (e.g. repeated NaN/Inf losses or gradients)."""


def seed_everything(seed: int) -> None:
    """Seed python `random`, numpy's global RNG and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
        self.act_state: State | None = None
        self.profile = {"env": 0.0, "act": 0.0, "sample": 0.0, "update": 0.0, "eval": 0.0}
        self.logger: Logger | None = None
        self.dataset: Any = None  # offline mode's OfflineDataset, opened on first use

    @property
    def updates_per_step(self) -> float:
        if self.config.updates_per_step is not None:
            return float(self.config.updates_per_step)
        ratio = self.config.train_ratio or self.agent.default_train_ratio
        return ratio / self.agent.replayed_per_update

    # --- the online loop ----------------------------------------------------------------------

    def train(self, stop_at: int | None = None) -> dict[str, Any]:
        """Run until `config.steps` env steps (or `stop_at`, then checkpoint and return)."""
        end = min(self.config.steps, stop_at) if stop_at is not None else self.config.steps
        self.logger = Logger(
            self.run_dir, self.config.steps, self.config.tensorboard, self.config.progress
        )
        self._store_rows()
        last_eval: dict[str, Any] | None = None
        try:
            while self.step < end:
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
                if self._crossed(prev, self.config.checkpoint_every) and self.step < end:
                    self.save()
                self.logger.progress(self.step, self.updates)
            self.save()
        finally:
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

    def _offline_update(self) -> None:
        """Offline mode: one update on a dataset batch; the step counter counts updates."""
        if self.dataset is None:
            from worldflux.data.offline import OfflineDataset

            self.dataset = OfflineDataset(self.config.dataset)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        batch = self.dataset.sample(self.agent.batch_size, self.agent.seq_len, self.rng)
        batch = batch.to(self.device)
        t1 = time.perf_counter()
        metrics = self.agent.learn(batch)
        self.profile["sample"] += t1 - t0
        self.profile["update"] += time.perf_counter() - t1
        self.step += 1
        self.updates += 1
        self._check_finite(metrics)
        if self._crossed(self.step - 1, self.config.log_every):
            assert self.logger is not None
            self.logger.log(self.step, "train", {**metrics, "updates": self.updates})

    def _crossed(self, prev: int, every: int) -> bool:
        return every > 0 and prev // every != self.step // every

    def _env_step(self) -> None:
        t0 = time.perf_counter()
        n = self.runner.num_envs
        if self.step < self.config.seed_steps:
            actions = random_actions(self.runner.action_spec, n, self.rng)
        else:
            obs = self.runner.obs_tensors(self.device)
            is_first = torch.from_numpy(self.runner.is_first.copy()).to(self.device)
            with torch.no_grad():
                action, self.act_state = self.agent.act(obs, self.act_state, True, is_first)
            actions = action.detach().cpu().numpy().astype(np.float32)
        t1 = time.perf_counter()
        for env_id, ret, length in self.runner.step(actions):
            self.episodes += 1
            assert self.logger is not None
            self.logger.log(
                self.step + n, "episode", {"return": ret, "length": length, "env": env_id}
            )
        self._store_rows()
        if self.step >= self.config.seed_steps:  # updates start with the agent's own steps
            self.credit += n * self.updates_per_step
        self.step += n
        t2 = time.perf_counter()
        self.profile["act"] += t1 - t0
        self.profile["env"] += t2 - t1

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
            metrics = self.agent.learn(batch)
            self.profile["sample"] += t1 - t0
            self.profile["update"] += time.perf_counter() - t1
            self.updates += 1
            self._check_finite(metrics)
            if self.updates % self._updates_per_log() == 0:
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
            },
            "agent": self.agent.state_dict(),
            "act_state": act,
            "runner": self.runner.state_dict(),
            "rng": capture_rng(),
            "trainer_rng": self.rng.bit_generator.state,
            "profile": dict(self.profile),
            "replay_saved": self.config.save_replay,
            "replay_rng": self.replay.get_state(),
        }

    def save(self) -> Path:
        """Checkpoint everything needed to continue exactly; returns the directory."""

        def extra(tmp: Path) -> None:
            if self.config.save_replay:
                self.replay.save(tmp / "replay")

        return self.checkpoints.save(self.step, self.state_tree(), extra)

    def restore(self, path: str | Path | None = None) -> None:
        """Load a checkpoint (default: the latest in `run_dir`) into this trainer."""
        path = Path(path) if path is not None else self.checkpoints.latest()
        if path is None:
            raise CheckpointError(f"resume: no checkpoint under {self.run_dir / 'checkpoints'}")
        tree = load_checkpoint(path)
        c = tree["counters"]
        self.step, self.updates, self.credit = c["step"], c["updates"], c["credit"]
        self.episodes, self.nonfinite_total = c["episodes"], c["nonfinite_total"]
        self.nonfinite_streak = c["nonfinite_streak"]
        self.profile.update(tree.get("profile", {}))
        self.agent.load_state_dict(tree["agent"])
        act = tree["act_state"]
        self.act_state = (
            None
            if act is None
            else State({k: v.to(self.device) for k, v in act["tensors"].items()})
        )
        self.runner.load_state_dict(tree["runner"])
        if tree["replay_saved"]:
            self.replay = type(self.replay).load(path / "replay")
        self.replay.set_state(tree["replay_rng"])
        restore_rng(tree["rng"])
        truncate_metrics(self.run_dir, self.step)
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = tree["trainer_rng"]


def train_offline(
    agent: Agent,
    sample: Callable[[int, int], Any],
    updates: int,
    logger: Logger | None = None,
    log_every: int = 100,
    max_nonfinite: int = 20,
) -> dict[str, float]:
    """`updates` updates on batches from `sample(batch_size, seq_len)` (an offline dataset)."""
    streak = skipped = 0
    last: dict[str, Any] = {}
    for u in range(1, updates + 1):
        metrics = agent.learn(sample(agent.batch_size, agent.seq_len))
        if float(metrics.get("nonfinite", 0.0)) > 0:
            streak, skipped = streak + 1, skipped + 1
            if streak >= max_nonfinite:
                raise TrainingError(
                    f"{streak} consecutive offline updates were NaN/Inf (update {u}); stopping"
                )
        else:
            streak = 0
        last = metrics
        if logger is not None and (u % log_every == 0 or u == updates):
            logger.log(u, "train", metrics)
    return {
        "updates": float(updates),
        "nonfinite": float(skipped),
        **{k: float(v) for k, v in last.items()},
    }

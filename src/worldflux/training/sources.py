"""Where the `Trainer`'s data comes from: the `Source` contract, `EnvSource` (envs stepped in
this process) and `OfflineSource` (a recorded dataset or a saved replay).

The third source, `worldflux.distributed.collector_source.CollectorSource`, gathers env steps
from collector processes. Every iteration of the training loop calls ``collect`` once, then
makes as many updates as the train-ratio credit allows, each on a batch from ``sample``.

A source's *stream state* (`state_dict`) is what only this process knows about its data: env
snapshots, acting memory, sampler RNGs. It goes into checkpoints beside the agent's weights
(under data-parallel training, one per rank).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from worldflux.core.state import State
from worldflux.training.runner import EnvFn, EnvRunner, random_actions

if TYPE_CHECKING:
    from worldflux.training.trainer import Trainer


class Source:
    """The contract between the `Trainer` and its data (defaults: nothing to do).

    ``replay`` is the buffer the updates sample (None when the data is not a buffer filled
    here); ``counts_updates`` says that the trainer's step counter counts updates (offline
    data) rather than env steps; ``streams`` is the number of replay streams this process
    fills (the refill after a resume without replay waits for ``seq_len`` rows in each).
    """

    replay: Any = None
    counts_updates = False
    streams = 0

    def running(self) -> contextlib.AbstractContextManager[Any]:
        """A block around one `Trainer.train` call (collector processes run inside it)."""
        return contextlib.nullcontext()

    def collect(self, trainer: Trainer) -> int:
        """Gather one iteration's data; -> steps gathered (summed over data-parallel ranks)."""
        raise NotImplementedError

    def ready(self, seq_len: int) -> bool:
        """Whether the data can give a `seq_len` window yet (credit earned before is dropped)."""
        del seq_len
        return True

    def sample(self, agent: Any, device: torch.device) -> Any:
        """One `Batch` of ``agent.batch_size`` windows of ``agent.seq_len`` rows on `device`."""
        return self.replay.sample(
            agent.batch_size, agent.seq_len, within_episode=agent.within_episode, device=device
        )

    def after_learn(self, trainer: Trainer, updates_before: int) -> None:
        """Called after an iteration's updates (collectors publish new weights from here)."""
        del trainer, updates_before

    def after_eval(self) -> None:
        """Called after an evaluation, which acted in envs of its own."""

    def reports(self) -> dict[str, dict[str, float]]:
        """Extra records to log with the profile: ``{kind: values}``."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Extra entries of `Trainer.train`'s result."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """This process's stream state (JSON values and tensors; see the module docstring)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Inverse of `state_dict`, from a checkpoint's (verified) tree: ``state["replay"]``
        holds the replay when the checkpoint has one; tensors go to `device`."""
        del state, device

    def reseed(self, seed: int) -> None:
        """Start this process's random streams afresh from `seed` (a rank without a shard)."""
        del seed

    def restart(self) -> None:
        """Start fresh episodes everywhere (the envs cannot continue where they stopped)."""

    def close(self) -> None:
        """Release envs and processes."""


class EnvSource(Source):
    """`num_envs` env copies made by `env_fn(i)`, stepped by an `EnvRunner` (`vector`: in this
    process, or ``"async"`` one worker process per copy).

    Until ``seed_steps`` env steps the actions are uniform random (from the source's RNG,
    seeded with `seed`); then the agent acts (``explore=True``) on the stacked observations.
    Every row goes to `replay` (env i is stream i). Before the agent acts it is told, with
    ``agent.on_episode_start(env_ids, envs)``, which envs began an episode since it last acted
    here: all of them at first, after a resume and after an evaluation.
    """

    def __init__(
        self, env_fn: EnvFn, num_envs: int, seed: int, replay: Any, vector: str = "sync"
    ) -> None:
        self.env_fn = env_fn
        self.runner = EnvRunner(env_fn, num_envs, seed, vector)
        self.replay = replay
        self.streams = num_envs
        self.rng = np.random.default_rng(seed)  # random actions, fresh-episode seeds
        self.act_state: State | None = None
        self.started = set(range(num_envs))  # envs whose new episode the agent has not seen

    def running(self) -> contextlib.AbstractContextManager[Any]:
        self._store_rows()  # the reset rows of new episodes (construction or restart)
        return contextlib.nullcontext()

    def collect(self, trainer: Trainer) -> int:
        t0 = time.perf_counter()
        n = self.runner.num_envs
        stepped = n * trainer.sync.world_size  # env steps this iteration, over all ranks
        if trainer.step < trainer.config.seed_steps:
            actions = random_actions(self.runner.action_spec, n, self.rng)
        else:
            actions = self._act(trainer.agent, trainer.device)
        t1 = time.perf_counter()
        for env_id, ret, length in self.runner.step(actions):
            self.started.add(env_id)
            trainer.record_episode(trainer.step + stepped, env_id, ret, length)
        self._store_rows()
        trainer.profile["act"] += t1 - t0
        trainer.profile["env"] += time.perf_counter() - t1
        return stepped

    def _act(self, agent: Any, device: torch.device) -> np.ndarray:
        if self.started:
            agent.on_episode_start(sorted(self.started), self.runner.envs)
            self.started.clear()
        obs, is_first = self.runner.observe(device)
        with torch.no_grad():
            action, self.act_state = agent.act(obs, self.act_state, explore=True, is_first=is_first)
        return action.detach().cpu().numpy().astype(np.float32)

    def _store_rows(self) -> None:
        for env_id, row in self.runner.rows:
            self.replay.add(row, env_id)
        self.runner.rows = []

    def after_eval(self) -> None:
        self.started = set(range(self.runner.num_envs))  # the agent acted toward other envs

    def state_dict(self) -> dict[str, Any]:
        act = None if self.act_state is None else {"tensors": self.act_state.tensors}
        return {
            "runner": self.runner.state_dict(),
            "act_state": act,
            "episodes_started": sorted(self.started),
            "trainer_rng": self.rng.bit_generator.state,
            "replay_rng": self.replay.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Acting memory, RNGs and (when the checkpoint holds one) the replay; the envs only
        from an exact checkpoint (else `restart` follows)."""
        act = state["act_state"]
        self.act_state = (
            None if act is None else State({k: v.to(device) for k, v in act["tensors"].items()})
        )
        self.started = set(started_envs(state, self.runner.num_envs))
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["trainer_rng"]
        if state["replay_saved"]:
            self.replay = state["replay"]  # verified with the checkpoint
            if not state.get("partial_step", False):
                seeds = [0] * self.runner.num_envs  # drawn only when an env cannot resume
                if any("restart" in snap for snap in state["runner"]["envs"]):
                    seeds = [int(s) for s in self.rng.integers(0, 2**31 - 1, size=len(seeds))]
                fresh = self.runner.load_state_dict(state["runner"], seeds)
                self.started.update(fresh)
                self._store_rows()  # the reset rows of envs that could not be restored
        self.replay.set_state(state["replay_rng"])

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def restart(self) -> None:
        """Every env starts a fresh episode, seeded from the source's RNG (deterministic, but
        not the episode an interrupted run was in)."""
        n = self.runner.num_envs
        seeds = self.rng.integers(0, 2**31 - 1, size=n)
        self.runner.restart([int(s) for s in seeds])
        self.act_state = None
        self.started = set(range(n))

    def close(self) -> None:
        self.runner.close()


def started_envs(state: dict[str, Any], num_envs: int) -> list[int]:
    """The envs whose episode start the agent has not seen, from a stream state (checkpoints
    written before ``episodes_started`` said ``goals_stale``: all envs or none)."""
    if "episodes_started" in state:
        return [int(i) for i in state["episodes_started"]]
    return list(range(num_envs)) if state.get("goals_stale", True) else []


class OfflineSource(Source):
    """Updates from fixed data: an `OfflineDataset` or a `Replay` loaded from disk.

    The step counter counts updates (one per iteration); batches are drawn with the source's
    RNG, seeded with `seed`. Nothing is collected and the data is not written to checkpoints
    (only the RNG state is). This is world-model pretraining under data-parallel sync.
    """

    counts_updates = True

    def __init__(self, data: Any, seed: int) -> None:
        self.data = data
        self.rng = np.random.default_rng(seed)
        self._share_rng()

    def _share_rng(self) -> None:
        if hasattr(self.data, "sample_indices"):  # a Replay draws with its own `rng`
            self.data.rng = self.rng

    def collect(self, trainer: Trainer) -> int:
        del trainer
        return 1

    def sample(self, agent: Any, device: torch.device) -> Any:
        if hasattr(self.data, "sample_indices"):
            return self.data.sample(
                agent.batch_size, agent.seq_len, within_episode=agent.within_episode,
                device=device,
            )  # fmt: skip
        return self.data.sample(agent.batch_size, agent.seq_len, self.rng).to(device)

    def state_dict(self) -> dict[str, Any]:
        return {"trainer_rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        del device
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["trainer_rng"]
        self._share_rng()

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self._share_rng()

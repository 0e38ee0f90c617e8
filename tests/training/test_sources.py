"""The Trainer's data sources: the episode-start hook an agent hears before acting, and offline
training from a saved replay (world-model pretraining's source) resuming exactly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from test_trainer import make_trainer, weights
from training_stub import StubAgent

from worldflux.data.replay import Replay
from worldflux.envs import make_env
from worldflux.training.config import TrainerConfig
from worldflux.training.runner import EnvRunner, random_actions
from worldflux.training.sources import OfflineSource
from worldflux.training.trainer import Trainer


class Recorder(StubAgent):
    """The stub agent, noting every `on_episode_start` call and every act since."""

    def __init__(self) -> None:
        super().__init__(4, 2, seed=3)
        self.events: list[Any] = []

    def on_episode_start(self, env_ids: Sequence[int], envs: Sequence[Any]) -> None:
        self.events.append(("start", list(env_ids), len(envs)))

    def act(self, obs: Any, state: Any = None, *, explore: bool, is_first: Any = None) -> Any:
        self.events.append(("act", explore))
        return super().act(obs, state, explore=explore, is_first=is_first)


def test_the_agent_hears_of_new_episodes_before_it_acts(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, steps=200, seed_steps=10, eval_every=100)
    agent = Recorder()
    t.agent = agent
    t.train()
    starts = [e for e in agent.events if e[0] == "start"]
    assert starts[0] == ("start", [0, 1], 2)  # both training envs, right before the first act
    assert agent.events[agent.events.index(starts[0]) + 1] == ("act", True)
    assert ("start", [0], 1) in starts  # the evaluation's own env, before it acts
    first_eval = agent.events.index(("act", False))
    after_eval = next(e for e in agent.events[first_eval:] if e[0] == "start" and e[2] == 2)
    assert after_eval[1] == [0, 1]  # the evaluation acted elsewhere: every env again
    # in between, only the envs whose episode ended (the stub ends CartPole episodes early)
    assert any(e[2] == 2 and len(e[1]) == 1 for e in starts), starts


def _saved_replay(path: Path) -> Path:
    env_fn = lambda i: make_env("CartPole-v1")  # noqa: E731
    runner = EnvRunner(env_fn, 2, seed=0)
    replay = Replay(1000, runner.envs[0].observation_space, runner.envs[0].action_space, num_envs=2)
    rng = np.random.default_rng(0)
    for _ in range(100):
        for env_id, row in runner.rows:
            replay.add(row, env_id)
        runner.step(random_actions(runner.action_spec, 2, rng))
    replay.save(path)
    return path


def _offline(run_dir: Path, data: Path, steps: int) -> Trainer:
    config = TrainerConfig(steps=steps, seed=5, eval_every=0, log_every=2, progress=False,
                           tensorboard=False, checkpoint_every=10**9)  # fmt: skip
    source = OfflineSource(Replay.load(data), config.seed)
    return Trainer(StubAgent(4, 2, seed=5), source, config, run_dir)


def test_offline_training_from_a_saved_replay_resumes_exactly(tmp_path: Path) -> None:
    data = _saved_replay(tmp_path / "replay")
    full = _offline(tmp_path / "full", data, 12)
    assert full.train()["updates"] == 12  # one update per step
    half = _offline(tmp_path / "split", data, 12)
    half.train(stop_at=5)
    assert not (half.checkpoints.latest() / "replay").exists()  # the data is not copied
    resumed = _offline(tmp_path / "split", data, 12)
    resumed.restore()
    assert resumed.step == 5 and resumed.train()["updates"] == 12
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = _offline(tmp_path / "other", data, 12)
    other.source.reseed(6)  # other draws, other weights: the comparison above can fail
    other.train()
    assert not torch.equal(weights(other)["w.weight"], a["w.weight"])

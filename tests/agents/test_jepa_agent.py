"""JEPA agent: offline training from a recorded dataset, goal-directed acting, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worldflux.agents import make_agent
from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.data.offline import OfflineDataset, RecordConfig, record_tworoom
from worldflux.envs import GymEnv
from worldflux.envs.tworoom import TwoRoomEnv


def _updates(agent, sample, n):  # noqa: ANN001, ANN202
    """`n` updates on batches from `sample(batch_size, seq_len)`: the last metrics, with
    ``nonfinite`` counting the skipped updates (offline data needs no trainer here)."""
    metrics, skipped = {}, 0.0
    for _ in range(n):
        metrics = agent.update(sample(agent.batch_size, agent.seq_len))
        skipped += float(metrics.get("nonfinite", 0.0))
    return {**metrics, "nonfinite": skipped}


def test_offline_training_and_goal_acting(tmp_path: Path) -> None:
    data = OfflineDataset(
        record_tworoom(tmp_path / "data", RecordConfig(episodes=4, episode_length=16))
    )
    env = GymEnv(TwoRoomEnv())
    agent = make_agent("jepa:debug", env.observation_space, env.action_space, seed=0,
                       agent_options={"batch_size": 4, "seq_len": 4, "samples": 16,
                                      "elites": 4, "iterations": 2, "horizon": 3})  # fmt: skip
    rng = np.random.default_rng(0)
    before = {k: v.clone() for k, v in agent.model.state_dict().items()}
    result = _updates(agent, lambda b, t: data.sample(b, t, rng), 5)
    assert result["nonfinite"] == 0.0 and np.isfinite(result["loss"])
    changed = [k for k, v in agent.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    obs = torch.from_numpy(env.reset(seed=1).obs[None])
    with pytest.raises(SpecError, match="set_goal"):
        agent.act(obs, None, explore=False)
    agent.set_goal(torch.from_numpy(env.env.unwrapped.goal_observation()[None]))
    action, state = agent.act(obs, None, explore=False, is_first=torch.tensor([True]))
    assert action.shape == (1, 2) and bool((action.abs() <= 1).all())
    action2, _ = agent.act(obs, state, explore=True, is_first=torch.tensor([False]))
    assert action2.shape == (1, 2)


def test_evaluate_gives_the_env_goal_to_the_planner() -> None:
    from worldflux.training.evaluate import evaluate

    env = GymEnv(TwoRoomEnv(max_steps=4))
    agent = make_agent("jepa:debug", env.observation_space, env.action_space, seed=0,
                       agent_options={"samples": 16, "elites": 4, "iterations": 2,
                                      "horizon": 2})  # fmt: skip
    result = evaluate(agent, lambda i: GymEnv(TwoRoomEnv(max_steps=4)), episodes=2, seed=0)
    assert len(result["returns"]) == 2 and all(1 <= n <= 4 for n in result["lengths"])
    assert agent.goal_rep is not None and agent.goal_rep.shape[0] == 1


def test_offline_mode_resumes_exactly(tmp_path: Path) -> None:
    from worldflux.training.run import build_trainer, resume_trainer
    from worldflux.training.run_config import parse_overrides

    data = record_tworoom(tmp_path / "data", RecordConfig(episodes=3, episode_length=12))
    items = [f"dataset={data}", "steps=6", "eval_every=3", "eval_episodes=1", "log_every=1",
             "checkpoint_every=1000000000", "progress=false", "tensorboard=false",
             "env.max_steps=3", "agent.batch_size=4", "agent.seq_len=4", "agent.samples=16",
             "agent.elites=4", "agent.iterations=2", "agent.horizon=2"]  # fmt: skip
    spec = parse_overrides("jepa:debug", "worldflux/TwoRoom-v0", items)
    full = build_trainer(spec, tmp_path / "full")
    summary = full.train()
    assert summary["updates"] == 6 and summary["eval"] is not None
    split = build_trainer(spec, tmp_path / "split")
    split.train(stop_at=3)
    resumed = resume_trainer(tmp_path / "split")
    assert resumed.step == 3
    resumed.train()
    for k, v in full.agent.model.state_dict().items():
        assert torch.equal(v, resumed.agent.model.state_dict()[k]), k


ONLINE = ["seed_steps=10", "num_envs=2", "eval_episodes=1", "log_every=10",
          "checkpoint_every=1000000000", "progress=false", "tensorboard=false", "env.max_steps=8",
          "agent.batch_size=4", "agent.seq_len=4", "agent.samples=16", "agent.elites=4",
          "agent.iterations=2", "agent.horizon=2", "updates_per_step=0.25",
          "replay_capacity=400"]  # fmt: skip


def test_online_training_gives_each_episode_its_goal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online JEPA: the trainer sets every env's goal when an episode starts (and after evals,
    which give the agent the eval env's goal), so acting past the seed steps works."""
    from worldflux.agents.jepa import JEPAAgent
    from worldflux.training.run import build_trainer
    from worldflux.training.run_config import parse_overrides

    spec = parse_overrides("jepa:debug", "worldflux/TwoRoom-v0", ["steps=48", "eval_every=24",
                                                                     *ONLINE])  # fmt: skip
    trainer = build_trainer(spec, tmp_path / "run")
    calls: list[np.ndarray] = []
    original = JEPAAgent.set_goal

    def record(self: JEPAAgent, goal_obs: torch.Tensor) -> None:
        calls.append(goal_obs.cpu().numpy())
        original(self, goal_obs)

    monkeypatch.setattr(JEPAAgent, "set_goal", record)
    summary = trainer.train()
    assert summary["step"] == 48 and summary["updates"] > 0 and summary["episodes"] >= 6
    assert summary["eval"] is not None
    train_goals = [g for g in calls if g.shape[0] == 2]  # eval sets (1, ...) goals
    assert len(train_goals) >= 3  # start, after each round of 8-step episodes, after the eval
    now = np.stack([env.env.unwrapped.goal_observation() for env in trainer.source.runner.envs])
    assert np.array_equal(train_goals[-1], now) or bool(trainer.source.started)
    assert len({g.tobytes() for g in train_goals}) >= 2  # new episodes brought new goals


def test_online_jepa_without_a_goal_env_is_rejected_up_front(tmp_path: Path) -> None:
    from worldflux.training.run import build_trainer
    from worldflux.training.run_config import parse_overrides

    spec = parse_overrides("jepa:debug", "CartPole-v1", ["env.image=true", "steps=20",
                                                          "progress=false"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"no goal_observation\(\).*train offline: dataset="):
        build_trainer(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("regularizer", ["sigreg", "vicreg", "ema", "none"])
def test_agent_learns_with_every_regularizer(regularizer: str, tmp_path: Path) -> None:
    """The EMA variant carries a frozen target encoder: the update steps the online weights,
    moves the target by EMA, and never asks autograd for the frozen ones."""
    data = OfflineDataset(
        record_tworoom(tmp_path / "data", RecordConfig(episodes=2, episode_length=8))
    )
    env = GymEnv(TwoRoomEnv())
    agent = make_agent("jepa:debug", env.observation_space, env.action_space, seed=0,
                       model_overrides={"regularizer": regularizer},
                       agent_options={"batch_size": 4, "seq_len": 4})  # fmt: skip
    before = {k: v.clone() for k, v in agent.model.state_dict().items()}
    rng = np.random.default_rng(0)
    result = _updates(agent, lambda b, t: data.sample(b, t, rng), 2)
    assert result["nonfinite"] == 0.0 and np.isfinite(result["loss"])
    after = agent.model.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert any(k.startswith("encoder.") for k in changed)
    frozen = [n for n, p in agent.model.named_parameters() if not p.requires_grad]
    assert bool(frozen) == (regularizer == "ema")
    assert all(n in changed for n in frozen)  # the EMA target moved toward the online encoder


def test_intermediate_weight_reaches_the_planner_and_survives_save(tmp_path: Path) -> None:
    from worldflux.agents.io import load_agent

    env = GymEnv(TwoRoomEnv())
    space = (env.observation_space, env.action_space)
    agent = make_agent("jepa:debug", *space, seed=0, agent_options={"intermediate_weight": 1.0})
    assert agent.planner.intermediate_weight == 1.0
    agent.save(tmp_path / "agent")
    assert load_agent(tmp_path / "agent").planner.intermediate_weight == 1.0
    assert make_agent("jepa:debug", *space, seed=0).planner.intermediate_weight == 0.0
    with pytest.raises(ConfigError, match="intermediate_weight"):
        make_agent("jepa:debug", *space, seed=0, agent_options={"intermediate_weight": -1.0})

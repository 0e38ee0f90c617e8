"""Each family's agent learns a trivially solvable task in a few hundred steps (debug presets).

Floating-point results differ between CPU kinds, and a different host acts like a different
seed, so every verdict here is taken over several seeds (agent init, trainer, env and replay
seeds all vary). Per-seed tables: `benchmarks/learning_test_seeds.py`, results in
`benchmarks/results/learning_test_seeds.md`. `frozen=True` sets every learning rate to 0 (the
updates run, the weights never move): the check that a bar can only be passed by learning.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from bandit import make_match_env, make_switch_env

from worldflux.agents import Agent, make_agent
from worldflux.data.replay import Replay
from worldflux.training.config import TrainerConfig
from worldflux.training.sources import EnvSource
from worldflux.training.trainer import Trainer

RANDOM_RETURN = 4.0  # 8 steps x 0.5
NO_CHECKPOINTS = 10**9  # env steps between periodic checkpoints: never during these runs


def _trainer(
    agent: Agent, env_fn: Any, replay: Replay, config: TrainerConfig, run_dir: Any
) -> Trainer:
    """A Trainer stepping `env_fn`'s envs into `replay` (evaluating on the same envs)."""
    source = EnvSource(env_fn, config.num_envs, config.seed, replay)
    return Trainer(agent, source, config, run_dir, eval_env_fn=env_fn)


def freeze(agent: Agent) -> None:
    """Learning rate 0 in every optimizer of `agent`: updates run, the weights stay put."""
    for opt in agent.optimizers().values():
        for group in opt.param_groups:
            group["lr"] = 0.0


def run(model: str, run_dir: Path, agent: dict[str, Any], seed: int = 0, frozen: bool = False,
        model_overrides: dict[str, Any] | None = None, **cfg: Any) -> dict[str, Any]:  # fmt: skip
    config = TrainerConfig(progress=False, tensorboard=False, eval_episodes=10, eval_every=0,
                           checkpoint_every=NO_CHECKPOINTS, replay_capacity=5000, seed=seed,
                           save_replay=False, **cfg)  # fmt: skip
    env = make_match_env()
    a = make_agent(model, env.observation_space, env.action_space, seed=seed,
                   agent_options=agent, model_overrides=model_overrides)  # fmt: skip
    if frozen:
        freeze(a)
    replay = Replay(5000, env.observation_space, env.action_space, seed=seed)
    trainer = _trainer(a, make_match_env, replay, config, run_dir)
    trainer.train()
    return trainer.run_eval()


def tdmpc2_match_light(seed: int, frozen: bool = False, precision: str = "fp32") -> float:
    """Eval return (of 8) of TD-MPC2 (lr raised to 1e-3) after 520 updates on MatchLight."""
    options = {"batch_size": 32, "precision": precision}
    with tempfile.TemporaryDirectory() as tmp:
        result = run("tdmpc2:debug", Path(tmp), options, seed, frozen, {"lr": 1e-3},
                     steps=600, seed_steps=80, updates_per_step=1.0)  # fmt: skip
    return float(result["return_mean"])


def dreamer_switch_light(
    seed: int, frozen: bool = False, precision: str = "fp32"
) -> dict[str, float]:
    """(good light, eval return before, after 400 updates) of DreamerV3 on SwitchLight; the
    good light is the one the untrained actor does not favour."""
    fast = {"wm_lr": 1e-3, "ac_lr": 3e-4, "imag_horizon": 5}
    config = TrainerConfig(steps=500, seed_steps=100, updates_per_step=1.0, progress=False,
                           tensorboard=False, eval_episodes=10, eval_every=0, seed=seed,
                           checkpoint_every=NO_CHECKPOINTS, replay_capacity=1000,
                           save_replay=False)  # fmt: skip
    probe = make_switch_env(0)()
    agent = make_agent("dreamerv3:debug", probe.observation_space, probe.action_space,
                       seed=seed, agent_options={"batch_size": 8, "seq_len": 8,
                                                 "precision": precision},
                       model_overrides=fast)  # fmt: skip
    if frozen:
        freeze(agent)
    replay = Replay(1000, probe.observation_space, probe.action_space, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        before0 = _trainer(agent, make_switch_env(0), replay, config, tmp).run_eval()
        good = 1 if before0["return_mean"] >= RANDOM_RETURN else 0  # favours light 0: 1 is good
        trainer = _trainer(agent, make_switch_env(good), replay, config, tmp)
        before = trainer.run_eval()["return_mean"]
        trainer.train()
        after = trainer.run_eval()["return_mean"]
    return {"good": good, "before": float(before), "after": float(after)}


def dreamer_match_light(seed: int, frozen: bool = False) -> float:
    """Eval return (of 8) of DreamerV3 after 1,500 updates on MatchLight (slow)."""
    fast = {"wm_lr": 1e-3, "ac_lr": 3e-4}
    with tempfile.TemporaryDirectory() as tmp:
        result = run("dreamerv3:debug", Path(tmp), {"batch_size": 16, "seq_len": 16}, seed,
                     frozen, fast, steps=1700, seed_steps=200,
                     updates_per_step=1.0)  # fmt: skip
    return float(result["return_mean"])


def dreamer_world_model_match_light(seed: int, frozen: bool = False) -> dict[str, float]:
    """Loss ratios (last / first) of 60 world-model updates on MatchLight data."""
    env = make_match_env()
    agent = make_agent("dreamerv3:debug", env.observation_space, env.action_space, seed=seed,
                       model_overrides={"wm_lr": 1e-3},
                       agent_options={"batch_size": 8, "seq_len": 8})  # fmt: skip
    if frozen:
        freeze(agent)
    replay = Replay(2000, env.observation_space, env.action_space, seed=seed)
    config = TrainerConfig(steps=160, seed_steps=160, progress=False, tensorboard=False,
                           eval_every=0, checkpoint_every=NO_CHECKPOINTS, replay_capacity=2000,
                           seed=seed, save_replay=False)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        _trainer(agent, make_match_env, replay, config, tmp).train()
    first = agent.update(replay.sample(8, 8))
    for _ in range(60):
        last = agent.update(replay.sample(8, 8))
    return {
        "rew": float(last["loss/rew"]) / float(first["loss/rew"]),
        "rec": float(last["loss/rec"]) / float(first["loss/rec"]),
        "nonfinite": float(last["nonfinite"]),
    }


def untrained_return(model: str, seed: int) -> float:
    """Eval return (of 8) after 50 random steps and no update."""
    with tempfile.TemporaryDirectory() as tmp:
        result = run(model, Path(tmp), {}, seed, steps=50, seed_steps=50, updates_per_step=0.01)
    return float(result["return_mean"])


SEEDS = (0, 1, 2)  # the fast learning tests run each seed; a majority must pass the bar


def test_tdmpc2_learns_match_light() -> None:
    """TD-MPC2 (MPPI, lr 1e-3) learns to name the lit light in 520 updates. Measured, eval
    return of 8 on seeds 0-9 (benchmarks/results/learning_test_seeds.md): 7.9-8.0 (the old
    test, lr 3e-4 and 120 updates: 3.4-8.0, bar met on 2 of 10 seeds); random policy 4.0;
    learning rates 0: 2.9-4.5. Bar: >= 7.0 on at least 2 of the 3 seeds."""
    returns = [tdmpc2_match_light(seed) for seed in SEEDS]
    assert sum(r >= 7.0 for r in returns) >= 2, returns


def test_dreamer_learns_switch_light() -> None:
    """DreamerV3 through the whole loop (Trainer, replay, world model, imagination), learning
    rates raised for speed: 400 updates turn the actor to the good switch. The good light is
    the one the untrained actor does not favour, so only learning passes. Measured on seeds
    0-9: eval return 0.2-2.7 of 8 before -> 8.0 after on every seed (the old test's 200
    updates: 0.0-7.9, bar met on 2 of 10 seeds); random policy 4.0; learning rates 0: after
    = before. Bar: before < 4.0 on every seed, after >= 7.0 on at least 2 of the 3 seeds."""
    results = [dreamer_switch_light(seed) for seed in SEEDS]
    assert all(r["before"] < RANDOM_RETURN for r in results), results
    assert sum(r["after"] >= 7.0 for r in results) >= 2, results


@pytest.mark.slow
def test_dreamer_learns_match_light() -> None:
    """MatchLight's reward depends on the previous observation AND the last action (an XOR of
    the two), so the world model must build that interaction inside the GRU before imagination
    can reward anything. At lr 1e-3 the reward head sits at the marginal (~0.45 for both cases)
    for ~700 updates, then separates (0.94 vs 0.06 after 1,000; probe of 2026-12-04), so the
    run needs ~1,500 updates. Measured on seeds 0-9: 7.6-8.0 of 8 (mean 7.89; ~130 s a seed on
    one shared thread); random 4.0. At the paper's rates (wm 1e-4, actor-critic 3e-5) 700
    updates stay at random level (3.6-3.8). Bar: >= 7.0 on seed 0 (0.6 below the worst of 10
    seeds, 3.0 above random)."""
    assert dreamer_match_light(0) >= 7.0 > RANDOM_RETURN


def test_dreamer_world_model_learns_match_light() -> None:
    """Fast Dreamer check (learning rate raised to 1e-3): 60 updates cut the world-model
    losses. Measured last/first on seeds 0-9: reward 0.48-0.50, reconstruction 0.06-0.18;
    learning rates 0: reward 1.00, reconstruction 0.87-1.30. Bars: reward < 0.8,
    reconstruction < 0.5."""
    r = dreamer_world_model_match_light(0)
    assert r["rew"] < 0.8 and r["rec"] < 0.5 and r["nonfinite"] == 0.0, r


def test_frozen_agents_fail_the_bars() -> None:
    """With every learning rate 0 the same runs miss the bars above (seed 0): the tests above
    pass only by learning."""
    assert tdmpc2_match_light(0, frozen=True) < 7.0
    r = dreamer_world_model_match_light(0, frozen=True)
    assert not (r["rew"] < 0.8 and r["rec"] < 0.5), r


@pytest.mark.parametrize("model", ["tdmpc2:debug", "dreamerv3:debug"])
def test_untrained_agent_is_near_random(model: str) -> None:
    """The smoke tests can fail: without updates the agents do not solve the task. Measured on
    seeds 0-9: TD-MPC2 3.5-5.0, DreamerV3 3.3-4.7 of 8 (bar < 7.0)."""
    assert untrained_return(model, 0) < 7.0


def test_tdmpc2_mppi_agent_switches_between_batches_of_envs() -> None:
    """Training with 2 envs and evaluating with 1 must not trip over the planner's warm start."""
    import torch

    env = make_match_env()
    agent = make_agent("tdmpc2:debug", env.observation_space, env.action_space, seed=0)
    obs2 = torch.eye(2)
    a, _ = agent.act(obs2, None, explore=True, is_first=torch.tensor([True, True]))
    a, _ = agent.act(obs2, None, explore=True, is_first=torch.tensor([False, True]))
    b, _ = agent.act(torch.eye(2)[:1], None, explore=False, is_first=torch.tensor([True]))
    c, _ = agent.act(obs2, None, explore=True, is_first=torch.tensor([False, False]))
    assert a.shape == (2, 2) and b.shape == (1, 2) and c.shape == (2, 2)

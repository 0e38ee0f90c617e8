"""DeepMind Control learning, one test per reward-learning family, at the benchmark suites'
settings (slow: outside `make test`; run with ``pytest -m slow tests/agents/test_dmc_learning.py``).

Each run trains on ``dmc:cartpole-balance`` (action repeat 2, 500 agent steps an episode) and
ends with a 5-episode evaluation (explore=False, real env returns). A random policy scores 362
there (`benchmarks/results/random_baselines.json`, 10 episodes). `frozen=True` sets every
learning rate to 0, the check that the bar is only passed by learning. JEPA plans toward goal
observations instead of maximising a reward, so DMC's reward tasks have no JEPA test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worldflux.training.run import build_trainer
from worldflux.training.run_config import parse_overrides
from worldflux.training.suites import suite_overrides

pytest.importorskip("dm_control")

ENV = "dmc:cartpole-balance"
RANDOM_RETURN = 362.0


def final_eval(model: str, suite: str, steps: int, seed: int, run_dir: Path, frozen: bool) -> float:
    """Train `model` with `suite`'s settings for `steps` agent steps; the final eval's mean."""
    ours = [f"steps={steps}", f"seed={seed}", f"eval_every={steps}", "eval_episodes=5"]
    items = suite_overrides(suite, model, [*ours, "progress=false", "tensorboard=false"])
    trainer = build_trainer(parse_overrides(model, ENV, items), run_dir)
    if frozen:
        for opt in trainer.agent.optimizers().values():
            for group in opt.param_groups:
                group["lr"] = 0.0
    trainer.train()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    evals = [r for r in map(json.loads, lines) if r["kind"] == "eval"]
    return float(evals[-1]["return_mean"])


@pytest.mark.slow
def test_tdmpc2_learns_cartpole_balance(tmp_path: Path) -> None:
    """TD-MPC2 1m, dmc_proprio (2,500 random steps, a 2,500-update burst, then one update per
    step): seed 0's training episodes went 242-336 during seeding to 676-729 at 5.5-6k steps
    and its eval 650 at 10k (benchmarks/results/learn_tdmpc2-1m_dmc-cartpole-balance.json);
    about 50 min a seed on one core. Bar at 6k steps: mean of 2 seeds >= 500 (138 above random,
    175 below seed 0's training episodes there)."""
    returns = [
        final_eval("tdmpc2:1m", "dmc_proprio", 6000, seed, tmp_path / str(seed), frozen=False)
        for seed in (0, 1)
    ]
    assert sum(returns) / len(returns) >= 500.0, returns


@pytest.mark.slow
def test_dreamerv3_learns_cartpole_balance(tmp_path: Path) -> None:
    """DreamerV3 size1m, dmc_proprio_cpu (train ratio 64: one 16x64 update per 16 agent
    steps, LaProp at 8x the rate, returns backpropagated to continuous actions). The published
    curve (official code, train ratio 512) reaches 490 at 50k agent steps; issue 16's target is
    500 there. Seed 0 of this recipe reached 612 at 30k (the paper's rate gave 224 there and 223
    at 50k). An untrained (debug) actor's near-constant actions already score 474 on seed 0
    here (a balance task rewards staying still), so the bar is the target itself, mean of 2
    seeds >= 500, and the frozen run below must stay under it. About 3 h a seed on one core."""
    returns = [
        final_eval(
            "dreamerv3:size1m", "dmc_proprio_cpu", 50_000, seed, tmp_path / str(seed), frozen=False
        )
        for seed in (0, 1)
    ]
    assert sum(returns) / len(returns) >= 500.0, returns


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "suite", "steps", "bar"),
    [("tdmpc2:1m", "dmc_proprio", 6000, 500.0),
     ("dreamerv3:size1m", "dmc_proprio_cpu", 50_000, 500.0)],
)  # fmt: skip
def test_frozen_agents_miss_the_dmc_bars(
    tmp_path: Path, model: str, suite: str, steps: int, bar: float
) -> None:
    """The same runs with every learning rate 0 stay below the bars above (seed 0)."""
    assert final_eval(model, suite, steps, 0, tmp_path, frozen=True) < bar

"""Exact resume with the real agents (planner warm starts, RSSM act state, target nets, optimizers)
and the non-finite guard on a model-owned update."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_update_guard import never_stepped

from worldflux.training.run import build_trainer, resume_trainer
from worldflux.training.run_config import parse_overrides
from worldflux.training.trainer import Trainer

CASES = {
    "tdmpc2:debug": ["agent.batch_size=8"],  # MPPI acting with warm starts
    "dreamerv3:debug": ["agent.batch_size=4", "agent.seq_len=8"],
}
LOOP = ["seed_steps=30", "num_envs=2", "updates_per_step=0.25", "eval_every=0",
        "checkpoint_every=1000000000", "progress=false", "tensorboard=false",
        "replay_capacity=1000"]  # fmt: skip


def assert_same_model_weights(a: Trainer, b: Trainer) -> None:
    wa, wb = a.agent.state_dict()["modules"]["model"], b.agent.state_dict()["modules"]["model"]
    for k, v in wa.items():
        assert torch.equal(v, wb[k]), k


@pytest.mark.parametrize("model", sorted(CASES))
def test_resume_is_exact_for_real_agents(model: str, tmp_path: Path) -> None:
    spec = parse_overrides(model, "Pendulum-v1", [*CASES[model], *LOOP, "steps=80"])
    full = build_trainer(spec, tmp_path / "full")
    full.train()
    half = build_trainer(spec, tmp_path / "split")
    half.train(stop_at=50)
    del half
    resumed = resume_trainer(tmp_path / "split")
    resumed.train()
    assert resumed.updates == full.updates > 0
    assert_same_model_weights(full, resumed)
    ra, rb = full.source.runner.obs, resumed.source.runner.obs
    assert all((x == y).all() for x, y in zip(ra, rb, strict=True))  # Box: one array per env


def test_extending_a_finished_run_equals_one_longer_run(tmp_path: Path) -> None:
    """A run that finished its budget, resumed with a larger ``steps`` (what
    ``benchmarks/learn.py`` does for an existing run dir), ends where one longer run ends."""
    items = [*CASES["dreamerv3:debug"], *LOOP]
    full = build_trainer(parse_overrides("dreamerv3:debug", "Pendulum-v1", [*items, "steps=80"]),
                         tmp_path / "full")  # fmt: skip
    full.train()
    short = build_trainer(parse_overrides("dreamerv3:debug", "Pendulum-v1", [*items, "steps=50"]),
                          tmp_path / "short")  # fmt: skip
    short.train()
    assert short.step == 50
    del short
    longer = resume_trainer(tmp_path / "short", steps=80)
    longer.train()
    assert (longer.step, longer.updates) == (full.step, full.updates)
    assert_same_model_weights(full, longer)


def test_dreamer_nonfinite_update_is_skipped() -> None:
    from bandit import make_match_env

    from worldflux.agents import make_agent
    from worldflux.data.replay import Replay
    from worldflux.training.runner import EnvRunner, random_actions

    env = make_match_env()
    agent = make_agent("dreamerv3:debug", env.observation_space, env.action_space, seed=0,
                       agent_options={"batch_size": 2, "seq_len": 4})  # fmt: skip
    replay = Replay(100, env.observation_space, env.action_space, seed=0)
    runner = EnvRunner(make_match_env, 1, seed=0)
    rng = __import__("numpy").random.default_rng(0)
    for _ in range(20):
        for i, row in runner.rows:
            replay.add(row, i)
        runner.step(random_actions(runner.action_spec, 1, rng))
    batch = replay.sample(2, 4)
    batch.reward[0, 1] = float("nan")
    wm = {k: v.clone() for k, v in agent.model.state_dict().items() if not k.startswith("actor")}
    metrics = agent.update(batch)
    assert metrics["nonfinite"] == 1.0
    for k, v in wm.items():
        assert torch.equal(v, agent.model.state_dict()[k]), k
    assert never_stepped(agent.opt.wm)  # Adam never stepped: no moments, no step count
    batch.reward[0, 1] = 0.0
    assert agent.update(batch)["nonfinite"] == 0.0 and not never_stepped(agent.opt.wm)


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_run_dir_carried_through_git_resumes_exactly(on_disk: bool, tmp_path: Path) -> None:
    """What `benchmarks/learn.py --logs benchmarks/inflight` relies on across sessions: a run dir
    committed with git and checked out elsewhere (no hard links, no empty dirs, new mtimes and
    path) resumes to the same weights as one uninterrupted run."""
    import shutil
    import subprocess

    disk = f"replay_on_disk={str(on_disk).lower()}"
    items = [*CASES["dreamerv3:debug"], *LOOP, "keep_checkpoints=1", disk]
    spec = parse_overrides("dreamerv3:debug", "Pendulum-v1", [*items, "steps=80"])
    full = build_trainer(spec, tmp_path / "full")
    full.train()
    half = build_trainer(spec, tmp_path / "repo" / "run")
    half.train(stop_at=50)
    del half

    def git(*args: str, cwd: Path) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                       check=True, capture_output=True)  # fmt: skip

    git("init", "-q", cwd=tmp_path / "repo")
    git("add", "-A", cwd=tmp_path / "repo")
    git("commit", "-q", "-m", "run", cwd=tmp_path / "repo")
    git("clone", "-q", str(tmp_path / "repo"), str(tmp_path / "clone"), cwd=tmp_path)
    shutil.rmtree(tmp_path / "repo")  # nothing of the original run dir is left to lean on
    resumed = resume_trainer(tmp_path / "clone" / "run")
    resumed.train()
    assert (resumed.step, resumed.updates) == (full.step, full.updates)
    assert_same_model_weights(full, resumed)

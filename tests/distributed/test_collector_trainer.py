"""`worldflux train ... --collectors N`: the Trainer fed by collector processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from worldflux.training.run import RunSpec, load_agent


def test_collector_trainer_runs_updates_and_syncs_weights(tmp_path: Path) -> None:
    pytest.importorskip("worldflux.agents.tdmpc2")
    from worldflux.distributed.trainer import build_collector_trainer

    trainer_cfg = {
        "steps": 256, "seed_steps": 32, "updates_per_step": 0.05, "eval_every": 0,
        "eval_episodes": 1, "checkpoint_every": 10**9, "log_every": 64, "progress": False,
        "tensorboard": False, "replay_capacity": 2000, "num_envs": 2, "save_replay": False,
    }  # fmt: skip
    spec = RunSpec(
        "tdmpc2:debug", "CartPole-v1", trainer_cfg, agent={"act": "policy", "batch_size": 8}
    )
    trainer = build_collector_trainer(
        spec, tmp_path, num_collectors=2, start_method="fork", chunk_len=4, pool_slots=1
    )
    ns = trainer.pool.namespace
    result = trainer.train()
    assert result["step"] >= 192 and result["updates"] >= 5
    stats = result["collectors"]
    assert all(c["chunks"] > 0 and c["restarts"] == 0 for c in stats["collectors"])
    # Initial weights, then at most one publish per burst of updates; collectors loaded some.
    assert 2 <= stats["version"] <= 1 + result["updates"]
    assert sum(n for v, n in trainer.rows_by_version.items() if v >= 2) > 0  # acted with them
    assert sum(trainer.rows_by_version.values()) == result["step"]
    # The replay keeps each row's acting version: the same rows the chunks reported ...
    replay = trainer.replay
    assert replay.track_versions and replay.written.max() <= replay.stream_capacity  # no wrap
    stored = {}
    for e in range(replay.num_envs):
        v = replay.policy_versions(e * replay.stream_capacity + np.arange(replay.counts[e]))
        assert (v >= 1).all() and (np.diff(v) >= 0).all(), (e, v)  # ... never back in time
        for x in v.tolist():
            stored[x] = stored.get(x, 0) + 1
    assert stored == trainer.rows_by_version
    assert trainer.replay.num_envs == 4 and (trainer.replay.counts > 0).all()
    assert trainer.episodes > 0  # CartPole episodes under a fresh policy are short
    assert not [e for e in os.listdir("/dev/shm") if e.startswith(f"worldflux_{ns}")]
    assert (tmp_path / "checkpoints").is_dir()
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lags = [x for x in logged if x.get("kind") == "collectors"]
    assert lags and all(x["version_lag"] >= 0 for x in lags), logged[:3]


def test_collector_run_resumes_with_collectors(tmp_path: Path) -> None:
    pytest.importorskip("worldflux.agents.tdmpc2")
    from worldflux.core.exceptions import ConfigError
    from worldflux.distributed.trainer import build_collector_trainer, resume_collector_trainer

    trainer_cfg = {
        "steps": 64, "seed_steps": 16, "updates_per_step": 0.05, "eval_every": 0,
        "eval_episodes": 1, "checkpoint_every": 10**9, "progress": False, "tensorboard": False,
        "replay_capacity": 1000, "num_envs": 1,
    }  # fmt: skip
    spec = RunSpec("tdmpc2:debug", "CartPole-v1", trainer_cfg, agent={"act": "policy"})
    first = build_collector_trainer(spec, tmp_path, 2, start_method="fork", chunk_len=8)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["collectors"] == {"num_collectors": 2, "start_method": "fork"}
    done = first.train()["step"]
    with pytest.raises(ConfigError, match="streams"):
        resume_collector_trainer(tmp_path, 3, {"steps": done + 32})
    # Collectors and start method come from run.json; the replay keeps its versions.
    again = resume_collector_trainer(tmp_path, trainer_changes={"steps": done + 32})
    assert (again.pool.config.num_collectors, again.pool.config.start_method) == (2, "fork")
    assert again.step == done and len(again.replay) == len(first.replay)
    assert again.replay.track_versions
    assert again.train()["step"] >= done + 32
    # The checkpoint's "run" stays a plain RunSpec: eval / imagine load collector runs too.
    agent, loaded = load_agent(tmp_path)
    assert loaded.model == "tdmpc2:debug" and agent is not None


def test_a_single_process_run_does_not_resume_with_collectors_by_accident(tmp_path: Path) -> None:
    from worldflux.core.exceptions import ConfigError
    from worldflux.distributed.trainer import load_run_file, resume_collector_trainer

    (tmp_path / "run.json").write_text(json.dumps({"model": "tdmpc2:debug", "env": "X"}))
    spec, info = load_run_file(tmp_path)
    assert info is None and spec.model == "tdmpc2:debug"
    with pytest.raises(ConfigError, match="single-process run"):
        resume_collector_trainer(tmp_path)
    bad = {"model": "tdmpc2:debug", "env": "X", "collectors": {"num_collectors": 0}}
    (tmp_path / "run.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="num_collectors"):
        load_run_file(tmp_path)


def test_jepa_collectors_plan_toward_each_episode_goal(tmp_path: Path) -> None:
    """Collectors act with the agent from their first step, so a goal-conditioned agent that
    were not given its envs' goals would fail at once (JEPA raises without a goal)."""
    from worldflux.distributed.trainer import build_collector_trainer

    trainer_cfg = {
        "steps": 64, "seed_steps": 16, "updates_per_step": 0.1, "eval_every": 0,
        "checkpoint_every": 10**9, "log_every": 32, "progress": False, "tensorboard": False,
        "replay_capacity": 400, "num_envs": 2, "save_replay": False,
    }  # fmt: skip
    agent = {"batch_size": 4, "seq_len": 4, "samples": 16, "elites": 4, "iterations": 2,
             "horizon": 2}  # fmt: skip
    spec = RunSpec("jepa:debug", "worldflux/TwoRoom-v0", trainer_cfg, agent=agent,
                   env_kwargs={"max_steps": 8})  # fmt: skip
    trainer = build_collector_trainer(
        spec, tmp_path, num_collectors=2, start_method="fork", chunk_len=4, pool_slots=2
    )
    result = trainer.train()
    assert result["step"] >= 64 and result["updates"] >= 1
    assert all(c["restarts"] == 0 for c in result["collectors"]["collectors"])
    assert trainer.episodes >= 4  # 8-step episodes: every collector env reset several times


def test_a_rejected_collector_run_leaves_no_run_dir(tmp_path: Path) -> None:
    from worldflux.core.exceptions import ConfigError
    from worldflux.distributed.trainer import build_collector_trainer

    base = {"steps": 64, "progress": False, "tensorboard": False}
    bad_device = RunSpec("tdmpc2:debug", "CartPole-v1", {**base, "device": "cuda:7"})
    with pytest.raises(ConfigError, match="device"):
        build_collector_trainer(bad_device, tmp_path / "a", num_collectors=1)
    bad_agent = RunSpec("tdmpc2:debug", "CartPole-v1", base, agent={"bogus": 1})
    with pytest.raises(ConfigError, match="bogus"):
        build_collector_trainer(bad_agent, tmp_path / "b", num_collectors=1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

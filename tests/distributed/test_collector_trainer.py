"""`worldflux train ... --collectors N`: the Trainer fed by a `CollectorSource`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from worldflux.agents.io import load_run_agent
from worldflux.training.run import build_trainer, resume_trainer
from worldflux.training.run_config import RunConfig, read_run_file


def test_collector_trainer_runs_updates_and_syncs_weights(tmp_path: Path) -> None:
    pytest.importorskip("worldflux.agents.tdmpc2")
    trainer_cfg = {
        "steps": 256, "seed_steps": 32, "updates_per_step": 0.05, "eval_every": 0,
        "eval_episodes": 1, "checkpoint_every": 10**9, "log_every": 64, "progress": False,
        "tensorboard": False, "replay_capacity": 2000, "num_envs": 2, "save_replay": False,
    }  # fmt: skip
    spec = RunConfig.of(
        "tdmpc2:debug", "CartPole-v1", trainer=trainer_cfg, agent={"act": "policy", "batch_size": 8}
    )
    trainer = build_trainer(
        spec, tmp_path, collectors=2, start_method="fork", chunk_len=4, pool_slots=1
    )
    source = trainer.source
    ns = source.pool.namespace
    result = trainer.train()
    assert result["step"] >= 192 and result["updates"] >= 5
    stats = result["collectors"]
    assert all(c["chunks"] > 0 and c["restarts"] == 0 for c in stats["collectors"])
    # Initial weights, then at most one publish per burst of updates; collectors loaded some.
    assert 2 <= stats["version"] <= 1 + result["updates"]
    assert sum(n for v, n in source.rows_by_version.items() if v >= 2) > 0  # acted with them
    assert sum(source.rows_by_version.values()) == result["step"]
    # The replay keeps each row's acting version: the same rows the chunks reported ...
    replay = trainer.replay
    assert replay.track_versions and replay.written.max() <= replay.stream_capacity  # no wrap
    stored = {}
    for e in range(replay.num_envs):
        v = replay.policy_versions(e * replay.stream_capacity + np.arange(replay.counts[e]))
        assert (v >= 1).all() and (np.diff(v) >= 0).all(), (e, v)  # ... never back in time
        for x in v.tolist():
            stored[x] = stored.get(x, 0) + 1
    assert stored == source.rows_by_version
    assert trainer.replay.num_envs == 4 and (trainer.replay.counts > 0).all()
    assert trainer.episodes > 0  # CartPole episodes under a fresh policy are short
    assert not [e for e in os.listdir("/dev/shm") if e.startswith(f"worldflux_{ns}")]
    assert (tmp_path / "checkpoints").is_dir()
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lags = [x for x in logged if x.get("kind") == "collectors"]
    assert lags and all(x["version_lag"] >= 0 for x in lags), logged[:3]


@pytest.mark.parametrize("on_disk", [False, True])
def test_collector_run_resumes_with_collectors(tmp_path: Path, on_disk: bool) -> None:
    pytest.importorskip("worldflux.agents.tdmpc2")
    from worldflux.core.exceptions import ConfigError

    trainer_cfg = {
        "steps": 64, "seed_steps": 16, "updates_per_step": 0.05, "eval_every": 0,
        "eval_episodes": 1, "checkpoint_every": 10**9, "progress": False, "tensorboard": False,
        "replay_capacity": 1000, "num_envs": 1, "replay_on_disk": on_disk,
    }  # fmt: skip
    spec = RunConfig.of("tdmpc2:debug", "CartPole-v1", trainer=trainer_cfg, agent={"act": "policy"})
    first = build_trainer(spec, tmp_path, collectors=2, start_method="fork", chunk_len=8)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["collectors"] == {"num_collectors": 2, "start_method": "fork"}
    done = first.train()["step"]
    with pytest.raises(ConfigError, match="streams"):
        resume_trainer(tmp_path, collectors=3, steps=done + 32)
    # Collectors and start method come from run.json; the replay keeps its versions.
    again = resume_trainer(tmp_path, steps=done + 32)
    pool = again.source.pool
    assert (pool.config.num_collectors, pool.config.start_method) == (2, "fork")
    assert again.step == done and len(again.replay) == len(first.replay)
    assert again.replay.track_versions
    if on_disk:  # every array memmapped under the run dir, the acting versions included
        for replay in (first.replay, again.replay):
            assert replay.directory == tmp_path / "replay"
            assert all(isinstance(a, np.memmap) for a in replay.arrays.values())
        v = again.replay.policy_versions(np.arange(int(again.replay.counts[0])))
        assert (v >= 1).all() and (np.diff(v) >= 0).all()  # read back from the saved memmap
    assert again.train()["step"] >= done + 32
    # The checkpoint's "run" is the run's RunConfig: eval / imagine load collector runs too.
    agent, loaded = load_run_agent(tmp_path)
    assert loaded.model_name == "tdmpc2:debug" and agent is not None


def test_a_single_process_run_does_not_resume_with_collectors_by_accident(tmp_path: Path) -> None:
    from worldflux.core.exceptions import ConfigError
    from worldflux.training.run_config import parse_overrides
    from worldflux.training.sources import EnvSource

    items = ["steps=8", "seed_steps=8", "eval_every=0", "progress=false", "tensorboard=false"]
    build_trainer(parse_overrides("tdmpc2:debug", "CartPole-v1", items), tmp_path).train()
    assert read_run_file(tmp_path).collectors == {}
    again = resume_trainer(tmp_path, steps=16)
    assert isinstance(again.source, EnvSource)  # in one process, as it was trained
    bad = {"model": "tdmpc2:debug", "env": "X", "collectors": {"num_collectors": 0}}
    (tmp_path / "run.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="num_collectors"):
        read_run_file(tmp_path)


def test_jepa_collectors_plan_toward_each_episode_goal(tmp_path: Path) -> None:
    """Collectors act with the agent from their first step, so a goal-conditioned agent that
    were not given its envs' goals would fail at once (JEPA raises without a goal)."""
    trainer_cfg = {
        "steps": 64, "seed_steps": 16, "updates_per_step": 0.1, "eval_every": 0,
        "checkpoint_every": 10**9, "log_every": 32, "progress": False, "tensorboard": False,
        "replay_capacity": 400, "num_envs": 2, "save_replay": False,
    }  # fmt: skip
    agent = {"batch_size": 4, "seq_len": 4, "samples": 16, "elites": 4, "iterations": 2,
             "horizon": 2}  # fmt: skip
    spec = RunConfig.of("jepa:debug", "worldflux/TwoRoom-v0", trainer=trainer_cfg, agent=agent,
                        env_options={"max_steps": 8})  # fmt: skip
    trainer = build_trainer(
        spec, tmp_path, collectors=2, start_method="fork", chunk_len=4, pool_slots=2
    )
    result = trainer.train()
    assert result["step"] >= 64 and result["updates"] >= 1
    assert all(c["restarts"] == 0 for c in result["collectors"]["collectors"])
    assert trainer.episodes >= 4  # 8-step episodes: every collector env reset several times


def test_a_rejected_collector_run_leaves_no_run_dir(tmp_path: Path) -> None:
    from worldflux.core.exceptions import ConfigError

    base = {"steps": 64, "progress": False, "tensorboard": False}
    bad_device = RunConfig.of("tdmpc2:debug", "CartPole-v1", trainer={**base, "device": "cuda:7"})
    with pytest.raises(ConfigError, match="device"):
        build_trainer(bad_device, tmp_path / "a", collectors=1)
    bad_agent = RunConfig.of("tdmpc2:debug", "CartPole-v1", trainer=base, agent={"bogus": 1})
    with pytest.raises(ConfigError, match="bogus"):
        build_trainer(bad_agent, tmp_path / "b", collectors=1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

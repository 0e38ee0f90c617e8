"""``env.vector=async``: env copies in worker processes give the rows of sync stepping, resume
exactly from snapshots taken in the workers, and shut down cleanly when a copy fails."""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from worldflux.core.exceptions import ConfigError
from worldflux.envs import make_env
from worldflux.envs.gym import GymEnv
from worldflux.training.env_copies import EnvWorkerError
from worldflux.training.run_config import parse_overrides
from worldflux.training.runner import EnvRunner, random_actions


def _rows(runner: EnvRunner) -> list[tuple[Any, ...]]:
    return [
        (i, np.asarray(r.obs).tobytes(), r.action.tobytes(), r.reward, r.is_first, r.is_last)
        for i, r in runner.rows
    ]


def _drive(runner: EnvRunner, steps: int, rng: np.random.Generator) -> list[tuple[Any, ...]]:
    out = []
    for _ in range(steps):
        runner.step(random_actions(runner.action_spec, runner.num_envs, rng))
        out += _rows(runner)
    return out


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_async_gives_the_rows_of_sync_and_resumes_from_worker_snapshots(env_id: str) -> None:
    def run(vector: str) -> tuple[list[Any], list[Any], dict[str, Any]]:
        runner = EnvRunner(lambda i: make_env(env_id, max_episode_steps=40), 2, 7, vector)
        rng = np.random.default_rng(0)
        try:
            before = _rows(runner) + _drive(runner, 90, rng)
            state = runner.state_dict()
            after = _drive(runner, 60, rng)
        finally:
            runner.close()
        return before, after, state

    sync_before, sync_after, sync_state = run("sync")
    async_before, async_after, async_state = run("async")
    assert sum(r[4] for r in sync_before) > 2  # episodes ended and were reset
    assert async_before == sync_before and async_after == sync_after
    assert "restart" not in async_state["envs"][0]  # a real snapshot, taken in the worker
    # a fresh async runner, restored from the snapshot, continues as the first one did
    resumed = EnvRunner(lambda i: make_env(env_id, max_episode_steps=40), 2, 99, "async")
    try:
        assert resumed.load_state_dict(async_state, [0, 0]) == []
        rng = np.random.default_rng(0)
        _drive_rng_to(rng, resumed, 90)
        assert _drive(resumed, 60, rng) == sync_after
    finally:
        resumed.close()


def _drive_rng_to(rng: np.random.Generator, runner: EnvRunner, steps: int) -> None:
    for _ in range(steps):  # advance the action RNG as the first run did
        random_actions(runner.action_spec, runner.num_envs, rng)


class Exploding(gym.Env):
    """Raises (or, with ``die``, kills its process) on its third step."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, die: bool = False) -> None:
        self.die, self.t = die, 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action: Any) -> Any:
        self.t += 1
        if self.t == 3:
            if self.die:
                os._exit(3)
            raise RuntimeError("boom\nin the simulator")
        return np.zeros(2, np.float32), 0.0, False, False, {}


def _exploding_fn(die: bool) -> Any:
    def make(index: int) -> Any:
        return make_env("CartPole-v1") if index == 0 else GymEnv(Exploding(die))

    return make


@pytest.mark.parametrize("die", [False, True])
def test_a_failing_copy_is_one_line_naming_it_and_no_worker_is_left(die: bool) -> None:
    runner = EnvRunner(_exploding_fn(die), 2, 0, "async")
    procs = runner.copies.procs  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    runner.step(random_actions(runner.action_spec, 2, rng))
    runner.step(random_actions(runner.action_spec, 2, rng))
    with pytest.raises(EnvWorkerError) as info:
        runner.step(random_actions(runner.action_spec, 2, rng))
    message = str(info.value)
    assert "\n" not in message and message.startswith("env copy 1 (Exploding)")
    if die:
        assert "worker process died (exit code 3) during advance" in message
    else:
        assert "raised RuntimeError: boom in the simulator (in advance)" in message
    assert not any(p.is_alive() for p in procs)
    runner.close()  # closing again is harmless


def test_close_ends_every_worker() -> None:
    runner = EnvRunner(lambda i: make_env("CartPole-v1"), 2, 0, "async")
    procs = runner.copies.procs  # type: ignore[attr-defined]
    assert all(p.is_alive() for p in procs)
    assert repr(runner.envs[1]) == "EnvHandle(1: CartPole-v1 in a worker process)"
    assert not hasattr(runner.envs[0], "goal_observation")  # CartPole has no goal
    runner.close()
    assert not any(p.is_alive() for p in procs)


def test_the_vector_option_is_an_env_key_not_a_make_env_option() -> None:
    config = parse_overrides("tdmpc2:debug", "CartPole-v1", ["vector=async"])
    assert config.env["vector"] == "async" and config.env_vector == "async"
    assert "vector" not in config.env_options()
    with pytest.raises(ConfigError, match="env.vector: expected one of"):
        EnvRunner(lambda i: make_env("CartPole-v1"), 1, 0, "threads")


def test_an_async_run_resumed_midway_equals_an_uninterrupted_sync_run(tmp_path: Any) -> None:
    from worldflux.training.run import build_trainer, resume_trainer

    items = ["steps=160", "seed=1", "seed_steps=60", "updates_per_step=0.25", "eval_every=0",
             "checkpoint_every=80", "num_envs=2", "replay_capacity=400", "progress=false",
             "tensorboard=false", "agent.batch_size=8", "max_episode_steps=30"]  # fmt: skip
    sync = build_trainer(parse_overrides("tdmpc2:debug", "CartPole-v1", items), tmp_path / "s")
    sync.train()
    config = parse_overrides("tdmpc2:debug", "CartPole-v1", [*items, "vector=async"])
    split = build_trainer(config, tmp_path / "a")
    split.train(stop_at=80)
    split.source.close()
    resumed = resume_trainer(tmp_path / "a")
    try:
        assert resumed.step == 80 and resumed.source.runner.copies.procs  # type: ignore[attr-defined]
        resumed.train()
    finally:
        resumed.source.close()
    a = sync.agent.modules()["model"].state_dict()
    b = resumed.agent.modules()["model"].state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    for name, arr in sync.replay.arrays.items():
        np.testing.assert_array_equal(arr, resumed.replay.arrays[name], err_msg=name)


def test_worldflux_train_closes_its_env_workers(tmp_path: Any, monkeypatch: Any) -> None:
    import worldflux
    from worldflux.training import env_copies

    made: list[Any] = []
    original = env_copies.ProcessEnvs.__init__

    def spy(self: Any, *args: Any) -> None:
        original(self, *args)
        made.append(self)

    monkeypatch.setattr(env_copies.ProcessEnvs, "__init__", spy)
    worldflux.train("tdmpc2:debug", "CartPole-v1", steps=40, run_dir=tmp_path / "run",
                    overrides={"env.vector": "async", "num_envs": 2, "seed_steps": 40,
                               "eval_every": 0, "progress": False})  # fmt: skip
    (copies,) = made
    assert len(copies.procs) == 2 and not any(p.is_alive() for p in copies.procs)

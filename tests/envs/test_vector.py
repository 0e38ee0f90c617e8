"""VectorEnv: per-copy rows equal single-env rows; next-step autoreset maps to is_first/is_last."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.envs import StepBatch, VectorEnv, make_env, make_vector_env


def test_rows_match_single_envs_with_explicit_resets() -> None:
    n, steps = 3, 120
    vec = make_vector_env("CartPole-v1", n, seed=10)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, (steps, n))
    rows = [vec.reset(seed=10)] + [vec.step(a) for a in actions]
    for i in range(n):
        env = make_env("CartPole-v1")
        expected = [env.reset(seed=10 + i)]
        for a in actions[:, i]:
            prev = expected[-1]
            expected.append(env.reset() if prev.is_last else env.step(int(a)))
        got = [r.row(i) for r in rows]
        for e, g in zip(expected, got, strict=True):
            assert np.array_equal(e.obs, g.obs) and np.array_equal(e.action, g.action)
            assert (e.reward, e.is_first, e.is_terminal, e.is_last) == (
                g.reward,
                g.is_first,
                g.is_terminal,
                g.is_last,
            )


def test_episode_boundaries_map_to_flags() -> None:
    vec = make_vector_env("CartPole-v1", 2, seed=0)
    batch = vec.reset(seed=0)
    assert batch.is_first.all() and batch.obs.shape == (2, 4) and batch.action.shape == (2, 2)
    history = [batch]
    for _ in range(60):
        history.append(vec.step(np.ones(2, np.int64)))  # push right: short episodes
    first = np.stack([b.is_first for b in history])  # (T, N)
    last = np.stack([b.is_last for b in history])
    assert last.sum() >= 4
    # the row right after an is_last row is the reset row, and only such rows are is_first
    np.testing.assert_array_equal(first[1:], last[:-1])
    reset_rows = [b.row(i) for b in history[1:] for i in range(2) if b.is_first[i]]
    assert all(r.reward == 0.0 and not r.action.any() for r in reset_rows)
    terminal = np.stack([b.is_terminal for b in history])
    assert np.array_equal(terminal, last)  # CartPole only terminates within 60 steps


def test_truncation_and_torch_actions() -> None:
    vec = make_vector_env("Pendulum-v1", 2, seed=0, action_repeat=4)  # 50 agent steps
    vec.reset()
    for t in range(50):
        out = vec.step(torch.zeros(2, 1))
        assert out.is_last.all() == (t == 49)
    assert not out.is_terminal.any()
    assert vec.step(torch.zeros(2, 1)).is_first.all()


def test_stack_and_errors() -> None:
    a = make_env("CartPole-v1", seed=0)
    b = make_env("Pendulum-v1", seed=0)
    with pytest.raises(SpecError, match=r"envs\[1\]"):
        VectorEnv([a, b])
    with pytest.raises(ConfigError, match="num_envs"):
        make_vector_env("CartPole-v1", 0)
    vec = VectorEnv([lambda: make_env("CartPole-v1"), lambda: make_env("CartPole-v1")])
    vec.reset(seed=0)
    with pytest.raises(SpecError, match="2 actions"):
        vec.step(np.zeros(3, np.int64))
    with pytest.raises(SpecError, match="non-empty"):
        StepBatch.stack([])
    assert vec.sample_actions().shape == (2,)


def test_same_rows_as_gymnasium_next_step_autoreset() -> None:
    """Gymnasium 1.x SyncVectorEnv (NEXT_STEP) gives the same transitions: the step after a
    terminated/truncated one returns the reset obs with reward 0 and no flags; here that row is
    ``is_first``. So is_last = terminated | truncated, is_first = the previous row's is_last."""
    import gymnasium

    n, steps = 3, 80
    ref = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make("CartPole-v1")] * n)
    assert ref.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.NEXT_STEP
    ours = make_vector_env("CartPole-v1", n)
    obs, _ = ref.reset(seed=7)
    rows = ours.reset(seed=7)
    np.testing.assert_array_equal(rows.obs, obs)
    actions = np.random.default_rng(1).integers(0, 2, (steps, n))
    prev_last = np.zeros(n, bool)
    for a in actions:
        obs, reward, terminated, truncated, _ = ref.step(a)
        rows = ours.step(a)
        np.testing.assert_array_equal(rows.obs, obs)
        np.testing.assert_array_equal(rows.reward, reward.astype(np.float32))
        np.testing.assert_array_equal(rows.is_terminal, terminated)
        np.testing.assert_array_equal(rows.is_last, terminated | truncated)
        np.testing.assert_array_equal(rows.is_first, prev_last)
        prev_last = rows.is_last

"""dm_control adapter: state vectors, time-limit truncation, repeat, seeding, 64x64 pixels."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from worldflux.core.exceptions import ConfigError
from worldflux.core.spec import ObsSpec

pytest.importorskip("dm_control", reason="dm_control not installed (extra 'dmc')")

from worldflux.envs import make_env  # noqa: E402
from worldflux.envs.dmc import DMCEnv  # noqa: E402


@pytest.fixture(scope="module")
def render_ok() -> None:
    try:
        frame = DMCEnv("cartpole", "swingup", seed=0).render((8, 8))
    except Exception as e:  # noqa: BLE001 - any GL failure means: no offscreen rendering here
        pytest.skip(f"offscreen MuJoCo rendering unavailable (MUJOCO_GL): {e}")
    assert frame.shape == (8, 8, 3)


def test_state_spaces_and_truncation_at_time_limit() -> None:
    env = make_env("dmc:cartpole-swingup", seed=0, action_repeat=8)
    assert env.observation_space == spaces.Box(-np.inf, np.inf, (5,), np.float32)
    assert env.action_space == spaces.Box(-1, 1, (1,), np.float32)
    first = env.reset()
    assert first.is_first and first.obs.dtype == np.float32 and first.obs.shape == (5,)
    rows = [first]
    while not rows[-1].is_last:
        rows.append(env.step(env.action_space.sample()))
    assert len(rows) == 1 + 1000 // 8 and rows[-1].truncated and not rows[-1].is_terminal
    assert not any(r.is_terminal for r in rows)
    assert 0 <= sum(r.reward for r in rows) <= 1000


def test_action_repeat_sums_rewards_and_seeding() -> None:
    one = DMCEnv("cartpole", "swingup", seed=3)
    two = DMCEnv("cartpole", "swingup", seed=3, action_repeat=2)
    a, b = one.reset(), two.reset()
    assert np.array_equal(a.obs, b.obs)
    actions = np.random.default_rng(0).uniform(-1, 1, (10, 1)).astype(np.float32)
    for act in actions:
        first, second = one.step(act), one.step(act)
        row = two.step(act)
        assert row.reward == pytest.approx(first.reward + second.reward, abs=1e-9)
        np.testing.assert_array_equal(row.obs, second.obs)
    other = DMCEnv("cartpole", "swingup", seed=4).reset()
    assert not np.array_equal(other.obs, a.obs)
    assert np.array_equal(one.reset(seed=3).obs, a.obs)


def test_pixels_are_64x64_uint8(render_ok) -> None:
    env = make_env("dmc:cartpole-swingup", seed=0, image=True)
    assert env.observation_space == spaces.Box(0, 255, (64, 64, 3), np.uint8)
    frame = env.reset().obs
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 5
    moved = frame
    for _ in range(5):
        moved = env.step(np.ones(1, np.float32)).obs
    assert not np.array_equal(moved, frame)
    small_shadows = make_env("dmc:cartpole-swingup", seed=0, image=True, shadow_size=512)
    diff = np.abs(small_shadows.reset().obs.astype(int) - frame)
    assert diff.mean() < 1.0  # identical on llvmpipe; a loose bound for other GL drivers
    env = make_env("dmc:cartpole-swingup", seed=0, image=True, proprio=True)
    obs = env.reset().obs
    assert obs["image"].shape == (64, 64, 3) and obs["state"].shape == (5,)
    assert ObsSpec.from_space(env.observation_space).is_dict


def test_bad_task_names() -> None:
    with pytest.raises(ConfigError, match="unknown cartpole-fly"):
        make_env("dmc:cartpole-fly")
    with pytest.raises(ConfigError, match="proprio"):
        DMCEnv("cartpole", "swingup", proprio=True)


def test_get_set_state_resumes_exactly() -> None:
    env = DMCEnv("walker", "walk", seed=0, action_repeat=4)
    rng = np.random.default_rng(0)
    env.reset()
    for _ in range(30):
        env.step(rng.uniform(-1, 1, 6).astype(np.float32))
    snap = env.get_state()
    actions = rng.uniform(-1, 1, (250, 6)).astype(np.float32)

    def finish(e: DMCEnv) -> list:
        rows = []
        for a in actions:
            rows.append(e.step(a))
            if rows[-1].is_last:
                break
        return rows

    ref = finish(env)
    other = DMCEnv("walker", "walk", seed=99, action_repeat=4)
    other.reset()
    other.set_state(snap)
    got = finish(other)
    assert len(got) == len(ref) == 250 - 30 and got[-1].truncated
    for r, g in zip(ref, got, strict=True):
        assert np.array_equal(r.obs, g.obs) and r.reward == g.reward
    assert np.array_equal(env.reset().obs, other.reset().obs)  # task RNG restored too


def test_make_env_accepts_render_mode_and_renders(render_ok) -> None:
    """`worldflux eval --video` passes render_mode='rgb_array'; dm_control renders offscreen."""
    env = make_env("dmc:cartpole-swingup", seed=0, render_mode="rgb_array")
    assert env.reset().obs.shape == (5,)
    frame = env.render((48, 64))
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8 and frame.std() > 0
    img = make_env("dmc:cartpole-swingup", seed=0, image=True, size=16, render_mode="rgb_array")
    assert img.reset().obs.shape == (16, 16, 3)
    with pytest.raises(ConfigError, match="render_mode: expected None or 'rgb_array'"):
        make_env("dmc:cartpole-swingup", render_mode="human")


def test_make_env_names_bad_dmc_options() -> None:
    with pytest.raises(ConfigError, match=r"env\.nosuch: unknown option for DMCEnv; valid: "
                       r"env\.camera, env\.shadow_size$"):  # fmt: skip
        make_env("dmc:cartpole-swingup", nosuch=1)
    with pytest.raises(ConfigError, match=r"env\.camera: expected int or None, got 'top'"):
        make_env("dmc:cartpole-swingup", camera="top")

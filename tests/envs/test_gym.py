"""Gymnasium adapter: spaces, row convention, termination vs truncation, repeat, seeding, images."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.core.spec import ActionSpec, ObsSpec
from worldflux.envs import ActionConverter, GymEnv, make_env, resize_image


class Counter(gymnasium.Env):
    """Reward 1 per inner step, terminates after `horizon` inner steps, records raw actions."""

    def __init__(self, horizon: int = 7, low=(-2.0, 0.0), high=(2.0, 10.0)) -> None:
        self.horizon = horizon
        self.observation_space = spaces.Dict(
            {"pos": spaces.Box(-1, 1, (2, 2), np.float64), "cell": spaces.Discrete(3, start=1)}
        )
        self.action_space = spaces.Box(np.array(low), np.array(high), dtype=np.float64)
        self.actions: list[np.ndarray] = []
        self.t = 0

    def _obs(self) -> dict[str, Any]:
        return {"pos": np.full((2, 2), self.t / 10), "cell": 1 + self.t % 3}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.actions.append(np.asarray(action))
        self.t += 1
        return self._obs(), 1.0, self.t >= self.horizon, False, {}


def run(env, n: int, seed: int | None = None) -> list:
    rows = [env.reset(seed=seed)]
    while not rows[-1].is_last and len(rows) <= n:
        rows.append(env.step(env.action_space.sample()))
    return rows


def test_cartpole_spaces_rows_and_termination() -> None:
    env = make_env("CartPole-v1", seed=0)
    assert env.observation_space == spaces.Box(-np.inf, np.inf, (4,), np.float32)
    assert env.action_space == spaces.Discrete(2)
    ObsSpec.from_space(env.observation_space), ActionSpec.from_space(env.action_space)
    first = env.reset(seed=0)
    assert first.is_first and not first.is_last and first.reward == 0.0
    assert first.obs.dtype == np.float32 and np.array_equal(first.action, [0.0, 0.0])
    rows = [first]
    while not rows[-1].is_last:
        rows.append(env.step(1))  # always push right: the pole falls, a true termination
    last = rows[-1]
    assert last.is_terminal and last.is_last and not last.truncated and len(rows) < 100
    assert np.array_equal(rows[1].action, [0.0, 1.0]) and rows[1].reward == 1.0
    with pytest.raises(SpecError, match="reset"):
        env.step(0)


def test_pendulum_truncates_at_200_and_repeat_halves_it() -> None:
    rows = run(make_env("Pendulum-v1", seed=0), 500)
    assert len(rows) == 201 and rows[-1].truncated and not rows[-1].is_terminal
    assert not any(r.is_last for r in rows[:-1])
    rows = run(make_env("Pendulum-v1", seed=0, action_repeat=2), 500)
    assert len(rows) == 101 and rows[-1].truncated


def test_action_normalisation_round_trip() -> None:
    box = spaces.Box(np.array([-2.0, 0.0]), np.array([2.0, 10.0]), dtype=np.float64)
    conv = ActionConverter(box)
    assert conv.space == spaces.Box(-1, 1, (2,), np.float32)
    rng = np.random.default_rng(0)
    for a in rng.uniform(-1, 1, (50, 2)).astype(np.float32):
        env_a, applied = conv(a)
        assert box.contains(env_a)
        np.testing.assert_allclose(conv.normalise(env_a), a, atol=1e-6)
        np.testing.assert_array_equal(applied, a)
    np.testing.assert_allclose(conv(np.array([-1.0, 1.0]))[0], [-2.0, 10.0])
    env_a, applied = conv(np.array([3.0, -7.0]))  # out of range: clipped
    np.testing.assert_allclose(env_a, [2.0, 0.0])
    np.testing.assert_array_equal(applied, [1.0, -1.0])
    with pytest.raises(SpecError, match="finite bounds"):
        ActionConverter(spaces.Box(-np.inf, np.inf, (2,)))
    disc = ActionConverter(spaces.Discrete(3, start=1))
    assert disc(2)[0] == 3 and disc(np.array([0.1, 0.7, 0.2], np.float32))[0] == 2
    assert disc(torch.tensor(0))[0] == 1 and disc.normalise(3).tolist() == [0, 0, 1]
    with pytest.raises(SpecError, match=r"\[0, 3\)"):
        disc(3)


@settings(max_examples=60, deadline=None)
@given(
    bounds=st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(1e-3, 1e3)), min_size=1, max_size=4),
    data=st.data(),
)
def test_normalisation_round_trip_property(bounds, data) -> None:
    low = np.array([b[0] for b in bounds])
    high = low + np.array([b[1] for b in bounds])
    conv = ActionConverter(spaces.Box(low, high, dtype=np.float64))
    a = np.array(
        data.draw(st.lists(st.floats(-1, 1), min_size=len(bounds), max_size=len(bounds))),
        np.float32,
    )
    env_a, applied = conv(a)
    assert ((env_a >= low - 1e-9) & (env_a <= high + 1e-9)).all()
    np.testing.assert_allclose(conv.normalise(env_a), applied, atol=1e-5)


def test_actions_reach_the_env_rescaled_and_repeat_sums_rewards() -> None:
    inner = Counter(horizon=7)
    env = GymEnv(inner, action_repeat=3, seed=0)
    space = env.observation_space
    assert space["pos"].shape == (4,) and space["cell"].shape == (3,)
    row = env.reset()
    assert row.obs["cell"].tolist() == [1, 0, 0] and row.obs["pos"].dtype == np.float32
    rows = [env.step(np.array([1.0, 0.0], np.float32)) for _ in range(3)]
    assert [r.reward for r in rows] == [3.0, 3.0, 1.0]  # 7 inner steps, the last repeat cut short
    assert [r.is_last for r in rows] == [False, False, True] and rows[-1].is_terminal
    assert len(inner.actions) == 7
    np.testing.assert_allclose(inner.actions[0], [2.0, 5.0])
    assert rows[0].obs["cell"].tolist() == [1, 0, 0]  # inner t = 3 -> cell 1 -> index 0
    assert rows[1].obs["cell"].tolist() == [1, 0, 0] and rows[2].obs["cell"].tolist() == [0, 1, 0]
    env.reset()
    with pytest.raises(SpecError, match=r"\(2,\) float vector"):
        env.step(np.zeros(3, np.float32))


def test_seeding_is_deterministic() -> None:
    def obs(seed: int) -> np.ndarray:
        return np.stack([r.obs for r in run(make_env("CartPole-v1", seed=seed), 50)])

    a, b, c = obs(3), obs(3), obs(4)
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    env = make_env("Pendulum-v1")
    x = env.reset(seed=11).obs
    env.step(env.action_space.sample())
    assert np.array_equal(env.reset(seed=11).obs, x)


def test_image_observations_and_proprio() -> None:
    env = make_env("Pendulum-v1", seed=0, image=True)
    assert env.observation_space == spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert ObsSpec.from_space(env.observation_space).fields["obs"].chw == (3, 64, 64)
    env.reset()
    row = env.step(env.action_space.sample())
    assert row.obs.shape == (64, 64, 3) and row.obs.dtype == np.uint8 and row.obs.std() > 0
    env = make_env("Pendulum-v1", seed=0, image=True, proprio=True, size=(32, 48))
    obs = env.reset().obs
    assert obs["image"].shape == (32, 48, 3) and obs["state"].shape == (3,)
    assert ObsSpec.from_space(env.observation_space).is_dict
    with pytest.raises(ConfigError, match="render_mode"):
        GymEnv(gymnasium.make("Pendulum-v1"), image=True)


def test_resize_image_is_a_real_resampler() -> None:
    flat = np.full((100, 80, 3), 77, np.uint8)
    assert np.array_equal(resize_image(flat, (64, 64)), np.full((64, 64, 3), 77, np.uint8))
    checker = ((np.indices((128, 128)).sum(0) % 2) * 255).astype(np.uint8)[..., None]
    small = resize_image(checker, (32, 32))  # antialiasing averages the 1-pixel pattern
    assert small.shape == (32, 32, 1) and abs(float(small.mean()) - 127.5) < 2 and small.std() < 3
    ramp = np.broadcast_to(np.arange(200, dtype=np.uint8)[None, :, None], (10, 200, 3))
    row = resize_image(np.ascontiguousarray(ramp), (5, 100))[0, :, 0].astype(int)
    assert (np.diff(row) >= 0).all() and abs(row[50] - 100) <= 2
    with pytest.raises(SpecError, match="uint8"):
        resize_image(np.zeros((4, 4, 3), np.float32), (2, 2))


def test_discrete_observations_become_one_hot() -> None:
    env = make_env("FrozenLake-v1", seed=0)
    assert env.observation_space.shape == (16,)
    assert env.reset().obs.tolist() == [1.0] + [0.0] * 15


def test_two_room_task_and_bad_ids() -> None:
    env = make_env("worldflux/TwoRoom-v0", seed=0)
    assert env.observation_space == spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert env.action_space == spaces.Box(-1, 1, (2,), np.float32)
    env.reset()
    assert env.step(np.zeros(2, np.float32)).obs.shape == (64, 64, 3)
    with pytest.raises(ConfigError, match="NoSuchEnv"):
        make_env("NoSuchEnv-v0")
    with pytest.raises(ConfigError, match="dmc:<domain>-<task>"):
        make_env("dmc:cartpole")
    with pytest.raises(ConfigError, match="action_repeat"):
        make_env("CartPole-v1", action_repeat=0)


def test_make_env_accepts_render_mode_for_videos() -> None:
    """`worldflux eval --video` adds render_mode='rgb_array' to the env kwargs."""
    env = make_env("CartPole-v1", seed=0, image=True, render_mode="rgb_array")
    assert env.reset().obs.shape == (64, 64, 3)
    frame = env.render()
    assert frame.shape == (400, 600, 3) and frame.dtype == np.uint8 and frame.std() > 0
    env = make_env("Pendulum-v1", seed=0, render_mode="rgb_array")  # vector obs, video frames
    env.reset()
    assert env.reset().obs.shape == (3,) and env.render().shape == (500, 500, 3)
    with pytest.raises(ConfigError, match=r"render_mode: expected None or 'rgb_array'.*'human'"):
        make_env("CartPole-v1", image=True, render_mode="human")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"nosuch": 1}, r"env\.nosuch: unknown option for PendulumEnv; valid: .*env\.g"),
     ({"max_episode_steps": "abc"}, r"env\.max_episode_steps: expected int or None, got 'abc'"),
     ({"image": 3}, "image: expected true or false, got 3"),
     ({"size": "big"}, r"size: expected an int or \[height, width\], got 'big'"),
     ({"action_repeat": 1.5}, r"action_repeat: expected an int >= 1, got 1\.5"),
     ({"seed": "x"}, "seed: expected an int or None")],
)  # fmt: skip
def test_make_env_rejects_bad_options_clearly(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_env("Pendulum-v1", **kwargs)


def test_make_env_checks_the_env_constructors_annotations() -> None:
    with pytest.raises(ConfigError, match=r"env\.max_steps: expected int, got 'a' \(str\)"):
        make_env("worldflux/TwoRoom-v0", max_steps="a")
    assert make_env("worldflux/TwoRoom-v0", max_steps=5, max_episode_steps=3).reset().is_first

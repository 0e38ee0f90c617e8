"""Atari adapter: spaces, frame skip with max-pool, no-op reset, game over, life loss, seeding."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from worldflux.core.exceptions import ConfigError
from worldflux.core.spec import ObsSpec

pytest.importorskip("ale_py", reason="ale-py not installed (extra 'atari')")

from worldflux.envs import make_env, resize_image  # noqa: E402
from worldflux.envs.atari import AtariEnv, rom_id  # noqa: E402


def test_spaces_and_reset_row() -> None:
    env = make_env("atari:Pong", seed=0)
    assert env.observation_space == spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert env.action_space == spaces.Discrete(6)
    row = env.reset()
    assert row.is_first and row.obs.shape == (64, 64, 3) and row.obs.dtype == np.uint8
    assert row.action.tolist() == [0.0] * 6
    gray = make_env("atari:Pong", seed=0, size=84, grayscale=True)
    assert gray.observation_space == spaces.Box(0, 255, (84, 84, 1), np.uint8)
    assert ObsSpec.from_space(gray.observation_space).fields["obs"].chw == (1, 84, 84)
    assert gray.reset().obs.shape == (84, 84, 1)
    assert rom_id("MsPacman") == "ms_pacman" and rom_id("pong") == "pong"


def test_frame_skip_max_pools_the_last_two_frames() -> None:
    env = AtariEnv("Pong", seed=1)
    env.reset()
    for _ in range(60):  # get into play, where sprites move
        env.step(2)
    saved = env.ale.cloneState()
    row = env.step(3)
    env.ale.restoreState(saved)
    frames, reward = [], 0.0
    for _ in range(4):
        _, r, *_ = env.env.step(3)
        reward += r
        frames.append(env.ale.getScreenRGB())
    expected = resize_image(np.maximum(frames[2], frames[3]), (64, 64))
    assert np.array_equal(row.obs, expected) and row.reward == reward
    assert not np.array_equal(frames[2], frames[3])  # the pooling is not a no-op here
    assert row.action.tolist() == [0, 0, 0, 1, 0, 0]


def test_noop_reset_and_seeding() -> None:
    starts = set()
    env = AtariEnv("Pong")
    for seed in range(8):
        env.reset(seed=seed)
        frames = env.ale.getEpisodeFrameNumber()
        assert 1 <= frames <= 30
        starts.add(frames)
    assert len(starts) > 1
    a, b = AtariEnv("Pong", seed=3, sticky=0.25), AtariEnv("Pong", seed=3, sticky=0.25)
    assert a.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    ra, rb = [a.reset().obs], [b.reset().obs]
    for t in range(40):
        ra.append(a.step(t % 6).obs)
        rb.append(b.step(t % 6).obs)
    assert np.array_equal(np.stack(ra), np.stack(rb))


def test_game_over_is_terminal_and_frame_limit_truncates() -> None:
    env = AtariEnv("Pong", seed=0, max_frames=400)
    rows = [env.reset()]
    while not rows[-1].is_last:
        rows.append(env.step(0))
    assert rows[-1].truncated and len(rows) <= 101
    env = AtariEnv("Breakout", seed=0, noop_max=0)
    env.reset()
    rng = np.random.default_rng(0)
    steps = 0
    row = env.step(1)
    while not row.is_last and steps < 2000:  # random play loses 5 lives in a few hundred steps
        row = env.step(int(rng.integers(4)))
        steps += 1
    assert row.is_terminal and row.is_last and row.info["lives"] == 0, steps


def test_episodic_life_marks_a_lost_life_terminal() -> None:
    env = AtariEnv("Breakout", seed=0, episodic_life=True)
    env.reset()
    for _ in range(1000):
        row = env.step(1)  # FIRE: launch the ball, never move
        if row.is_last:
            break
    assert row.is_terminal and row.info["life_lost"] and row.info["lives"] == 4
    frame_before = env.ale.getEpisodeFrameNumber()
    again = env.reset()  # continues the same game
    assert again.is_first and env.ale.getEpisodeFrameNumber() == frame_before
    assert env.step(1).info["lives"] == 4


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="no ROM"):
        AtariEnv("NotAGame")
    with pytest.raises(ConfigError, match="sticky"):
        AtariEnv("Pong", sticky=1.5)
    with pytest.raises(ConfigError, match="frame_skip"):
        AtariEnv("Pong", frame_skip=0)


def test_get_set_state_resumes_exactly() -> None:
    env = AtariEnv("Breakout", seed=0, sticky=0.25)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(50):
        env.step(int(rng.integers(4)))
    snap = env.get_state()
    actions = rng.integers(0, 4, 100)
    ref = [env.step(int(a)) for a in actions[:60]] + [env.reset()]
    other = AtariEnv("Breakout", seed=7, sticky=0.25)
    other.reset()
    other.set_state(snap)
    got = [other.step(int(a)) for a in actions[:60]] + [other.reset()]
    for r, g in zip(ref, got, strict=True):
        assert np.array_equal(r.obs, g.obs) and (r.reward, r.is_last) == (g.reward, g.is_last)


def test_rewards_are_not_clipped() -> None:
    env = AtariEnv("SpaceInvaders", seed=0)
    env.reset()
    rewards = [env.step(1).reward for _ in range(150)]  # keep firing: invaders are worth 5-30
    assert max(rewards) >= 5.0


def test_make_env_accepts_render_mode_and_renders() -> None:
    """`worldflux eval --video` passes render_mode='rgb_array'; ALE keeps the screen."""
    env = make_env("atari:Pong", seed=0, render_mode="rgb_array")
    assert env.reset().obs.shape == (64, 64, 3)
    frame = env.render()
    assert frame.shape == (210, 160, 3) and frame.dtype == np.uint8 and frame.std() > 0
    with pytest.raises(ConfigError, match="render_mode: expected None or 'rgb_array'"):
        make_env("atari:Pong", render_mode="human")
    with pytest.raises(ConfigError, match=r"env\.nosuch: unknown option for AtariEnv"):
        make_env("atari:Pong", nosuch=1)
    with pytest.raises(ConfigError, match=r"env\.sticky: expected float, got 'high'"):
        make_env("atari:Pong", sticky="high")

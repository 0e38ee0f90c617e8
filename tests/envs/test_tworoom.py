"""TwoRoomEnv: determinism, walls and the door, success, truncation, rendering, speed."""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import pytest

from worldflux.core.exceptions import ConfigError
from worldflux.envs.tworoom import ENV_ID, TwoRoomEnv, expert_action, register_tworoom


def test_reset_is_deterministic_under_seed() -> None:
    a, b = TwoRoomEnv(), TwoRoomEnv()
    oa, ia = a.reset(seed=3)
    ob, ib = b.reset(seed=3)
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(ia["goal"], ib["goal"])
    rng = np.random.default_rng(0)
    for _ in range(20):
        act = rng.uniform(-1, 1, 2)
        np.testing.assert_array_equal(a.step(act)[0], b.step(act)[0])
    _, ic = TwoRoomEnv().reset(seed=4)
    assert not np.allclose(ia["pos"], ic["pos"])


def test_observation_is_uint8_image_without_goal() -> None:
    env = TwoRoomEnv()
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(obs, env.render_at(info["pos"]))  # only the agent is drawn
    assert not np.array_equal(obs, env.goal_observation())
    moved = env.render_at(info["pos"] + np.array([0.0, 0.02]))  # sub-pixel-ish moves show up
    assert not np.array_equal(obs, moved)


@pytest.mark.parametrize("y", [0.15, 0.85])
def test_wall_blocks_outside_the_door(y: float) -> None:
    env = TwoRoomEnv()
    env.reset(seed=0, options={"start": (0.3, y), "goal": (0.9, 0.9)})
    for _ in range(30):
        *_, info = env.step(np.array([1.0, 0.0]))
    assert info["pos"][0] < 0.5 - env.wall_width / 2 - env.agent_radius + 1e-9
    assert info["pos"][1] == pytest.approx(y)  # slides, keeps its height


def test_door_lets_the_agent_through() -> None:
    env = TwoRoomEnv()
    env.reset(seed=0, options={"start": (0.3, 0.5), "goal": (0.95, 0.95)})
    for _ in range(10):
        *_, info = env.step(np.array([1.0, 0.0]))
    assert info["pos"][0] > 0.6


def test_random_walks_never_enter_walls() -> None:
    env = TwoRoomEnv(start_room="any", goal_room="any")
    rng = np.random.default_rng(1)
    env.reset(seed=1)
    crossings = 0
    side = env.room_of(env.pos)
    for _ in range(3000):
        env.step(rng.uniform(-1, 1, 2) + np.array([0.0, 0.0]))
        assert not env.blocked(env.pos)
        if env.room_of(env.pos) != side:
            crossings += 1
            side = env.room_of(env.pos)
            assert (
                abs(env.pos[1] - env.door_y) < env.door_height / 2 or abs(env.pos[0] - 0.5) > 0.05
            )


def test_batched_dynamics_match_single_steps() -> None:
    env = TwoRoomEnv()
    rng = np.random.default_rng(2)
    pos = np.stack([env.sample_free(rng, "any") for _ in range(200)])
    pos[:20, 0], pos[:20, 1] = 0.44, np.linspace(0.3, 0.7, 20)  # next to the wall and door
    acts = rng.uniform(-1.5, 1.5, (200, 2))
    batched = env.move_batch(pos, acts)
    single = np.stack([env.move(p, a) for p, a in zip(pos, acts, strict=True)])
    np.testing.assert_array_equal(batched, single)
    np.testing.assert_array_equal(env.blocked_batch(pos), [env.blocked(p) for p in pos])


def test_success_terminates_with_reward() -> None:
    env = TwoRoomEnv()
    env.reset(seed=0, options={"start": (0.2, 0.2), "goal": (0.3, 0.2)})
    _, reward, term, trunc, info = env.step(np.array([1.0, 0.0]))
    assert info["success"] and term and not trunc and reward == 1.0
    assert info["distance"] <= env.success_radius


def test_truncation_at_max_steps() -> None:
    env = TwoRoomEnv(max_steps=5)
    env.reset(seed=0)
    outs = [env.step(np.zeros(2)) for _ in range(5)]
    assert [o[3] for o in outs] == [False] * 4 + [True]
    assert not any(o[2] for o in outs)


@pytest.mark.parametrize(("goal_room", "same"), [("other", False), ("same", True)])
def test_goal_room_option(goal_room: str, same: bool) -> None:
    env = TwoRoomEnv(start_room="any", goal_room=goal_room)
    for seed in range(20):
        _, info = env.reset(seed=seed)
        assert (env.room_of(info["pos"]) == env.room_of(info["goal"])) == same


def test_expert_crosses_the_door_within_budget() -> None:
    env = TwoRoomEnv(start_room="left", goal_room="other")
    for seed in range(30):
        env.reset(seed=seed)
        for _ in range(50):
            *_, term, _, info = env.step(expert_action(env, env.pos, env.goal))
            if term:
                break
        assert info["success"], f"seed {seed}: expert ended {info['distance']:.3f} away"


def test_bad_input_raises_clear_errors() -> None:
    env = TwoRoomEnv()
    env.reset(seed=0)
    with pytest.raises(ConfigError, match="action"):
        env.step(np.array([np.nan, 0.0]))
    with pytest.raises(ConfigError, match="action"):
        env.step(np.zeros(3))
    with pytest.raises(ConfigError, match="start_room"):
        TwoRoomEnv(start_room="kitchen")
    with pytest.raises(ConfigError, match="start"):
        env.reset(options={"start": (0.5, 0.1)})  # inside the wall


def test_registered_with_gymnasium() -> None:
    register_tworoom()
    register_tworoom()  # idempotent
    env = gym.make(ENV_ID)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3)
    env.close()


def test_thousands_of_steps_per_second() -> None:
    env = TwoRoomEnv()
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (2000, 2))
    t0 = time.perf_counter()
    for a in actions:
        env.step(a)
    rate = len(actions) / (time.perf_counter() - t0)
    assert rate > 1000, f"{rate:.0f} steps/s"

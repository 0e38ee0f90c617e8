"""Replay: row convention, stream and episode boundaries, FIFO, seeding, save/load, memmap."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.data import Replay
from worldflux.envs import StepBatch, make_vector_env

VEC = spaces.Box(-np.inf, np.inf, (3,), np.float32)  # (stream id, row id, episode id)
ACT = spaces.Box(-1.0, 1.0, (2,), np.float32)


class Streams:
    """Synthetic env streams: obs = (stream, row counter, episode); episodes of given lengths."""

    def __init__(self, num_envs: int, lengths: list[int]) -> None:
        self.n, self.lengths = num_envs, lengths
        self.t = np.zeros(num_envs, np.int64)  # row counter per stream
        self.k = np.zeros(num_envs, np.int64)  # step within the episode
        self.ep = np.zeros(num_envs, np.int64)
        self.rows: list[list[np.ndarray]] = [[] for _ in range(num_envs)]

    def next(self) -> StepBatch:
        ids = np.arange(self.n)
        length = np.asarray(
            [self.lengths[(e + i) % len(self.lengths)] for i, e in zip(ids, self.ep, strict=True)]
        )
        first = self.k == 0
        last = self.k == length - 1
        obs = np.stack([ids, self.t, self.ep], 1).astype(np.float32)
        action = np.where(first[:, None], 0.0, np.stack([self.t, -self.t], 1) / 1e4)
        batch = StepBatch(
            obs,
            action.astype(np.float32),
            np.where(first, 0.0, 1.0 + self.t),
            first,
            last & (self.ep % 2 == 0),
            last,
        )
        for e in ids:
            self.rows[e].append(obs[e])
        self.t += 1
        self.k = np.where(last, 0, self.k + 1)
        self.ep = np.where(last, self.ep + 1, self.ep)
        return batch


def filled(num_envs=3, capacity=300, steps=60, lengths=(7, 11, 5), seed=0, **kw) -> Replay:
    replay = Replay(capacity, VEC, ACT, num_envs=num_envs, seed=seed, **kw)
    src = Streams(num_envs, list(lengths))
    for _ in range(steps):
        replay.add(src.next())
    return replay


def test_row_convention_and_batch_contract() -> None:
    batch = filled().sample(32, 16)
    batch.validate()
    assert batch.obs.shape == (32, 16, 3) and batch.obs.dtype == torch.float32
    assert batch.action.shape == (32, 16, 2) and batch.reward.shape == (32, 16)
    first = batch.is_first
    assert (batch.action[first] == 0).all() and (batch.reward[first] == 0).all()
    # the row after an is_last row starts a new episode (same stream)
    after_last = batch.is_last[:, :-1]
    assert batch.is_first[:, 1:][after_last].all()
    assert (batch.is_terminal <= batch.is_last).all()


def test_windows_stay_in_one_stream_and_are_consecutive() -> None:
    batch = filled(steps=80).sample(256, 12)
    stream, row = batch.obs[..., 0], batch.obs[..., 1]
    assert (stream == stream[:, :1]).all()
    assert (row[:, 1:] - row[:, :-1] == 1).all()


def test_dreamer_windows_cross_episodes_only_at_is_first() -> None:
    batch = filled().sample(256, 16)
    ep = batch.obs[..., 2]
    changed = ep[:, 1:] != ep[:, :-1]
    assert changed.any()  # episodes of length 5-11 inside windows of 16
    assert torch.equal(changed, batch.is_first[:, 1:])


def test_within_episode_windows() -> None:
    batch = filled().sample(256, 4, within_episode=True)
    ep = batch.obs[..., 2]
    assert (ep == ep[:, :1]).all()
    assert not batch.is_first[:, 1:].any() and not batch.is_last[:, :-1].any()
    with pytest.raises(SpecError, match="within_episode"):
        filled(lengths=(3,)).sample(8, 6, within_episode=True)


def test_within_episode_when_valid_windows_are_rare() -> None:
    replay = filled(num_envs=1, capacity=200, steps=150, lengths=[1] * 40 + [6])
    idx = replay.sample_indices(2000, 5, within_episode=True)  # fallback to the exact list
    batch = replay.gather(idx)
    ep = batch.obs[..., 2]
    assert (ep == ep[:, :1]).all() and batch.is_first[:, 0].float().mean() > 0.3
    starts = np.unique(idx[:, 0])
    assert len(starts) == 2 * len(np.unique(ep[:, 0]))  # both windows of each 6-row episode


def test_sampling_is_uniform_over_valid_windows() -> None:
    replay = filled(num_envs=2, capacity=100, steps=30)  # 2 streams x 21 starts of length 10
    idx = replay.sample_indices(42_000, 10)
    counts = np.bincount(idx[:, 0], minlength=100)
    counts = counts[counts > 0]
    assert len(counts) == 42 and counts.min() > 800 and counts.max() < 1200  # expected 1000


def test_fifo_eviction_and_wraparound() -> None:
    replay = filled(num_envs=2, capacity=40, steps=55)  # 20 rows per stream, 55 written
    assert len(replay) == 40 and replay.counts.tolist() == [20, 20]
    assert repr(replay).startswith("Replay(40/40 rows, 2 streams")
    batch = replay.sample(500, 20)
    row = batch.obs[..., 1]
    assert row.min() == 35 and row.max() == 54  # only the newest 20 rows of each stream
    assert (row[:, 1:] - row[:, :-1] == 1).all()  # windows read across the ring's end


def test_same_seed_same_batches_and_different_seed_differs() -> None:
    a, b, c = filled(seed=5), filled(seed=5), filled(seed=6)
    for _ in range(3):
        x, y, z = a.sample(8, 10), b.sample(8, 10), c.sample(8, 10)
        assert torch.equal(x.obs, y.obs) and torch.equal(x.reward, y.reward)
    assert not torch.equal(x.obs, z.obs)


def test_rng_state_is_json_and_restores_the_sequence() -> None:
    replay = filled()
    state = json.loads(json.dumps(replay.get_state()))
    first = [replay.sample(4, 8).obs for _ in range(3)]
    replay.set_state(state)
    again = [replay.sample(4, 8).obs for _ in range(3)]
    assert all(torch.equal(p, q) for p, q in zip(first, again, strict=True))
    with pytest.raises(SpecError, match="state"):
        replay.set_state({"nope": 1})


def _same(a: Replay, b: Replay, n: int = 4) -> None:
    for _ in range(n):
        x, y = a.sample(6, 9), b.sample(6, 9)
        if isinstance(x.obs, dict):
            assert x.obs.keys() == y.obs.keys()
            assert all(torch.equal(x.obs[k], y.obs[k]) for k in x.obs)
        else:
            assert torch.equal(x.obs, y.obs)
        for f in ("action", "reward", "is_first", "is_terminal", "is_last"):
            assert torch.equal(getattr(x, f), getattr(y, f)), f


def test_save_load_continues_identically(tmp_path) -> None:
    src = Streams(3, [7, 11, 5])
    replay = Replay(300, VEC, ACT, num_envs=3, seed=1)
    for _ in range(50):
        replay.add(src.next())
    replay.sample(4, 8)  # advance the RNG before saving
    replay.save(tmp_path / "ckpt")
    loaded = Replay.load(tmp_path / "ckpt")
    _same(replay, loaded)
    for _ in range(20):  # both keep accepting rows where they stopped
        rows = src.next()
        replay.add(rows)
        loaded.add(rows)
    _same(replay, loaded)
    assert list((tmp_path / "ckpt").glob("*.pkl")) == []


def test_save_load_after_the_ring_wrapped(tmp_path) -> None:
    replay = filled(num_envs=2, capacity=40, steps=55, seed=2)
    replay.save(tmp_path / "a")
    for loaded in (
        Replay.load(tmp_path / "a"),
        Replay.load(tmp_path / "a", directory=tmp_path / "b"),
    ):
        assert loaded.written.tolist() == [55, 55] and len(loaded) == 40
        twin = filled(num_envs=2, capacity=40, steps=55, seed=2)
        twin.set_state(loaded.get_state())
        _same(twin, loaded)


def test_memmap_mode_matches_memory_and_saves_in_place(tmp_path) -> None:
    mem = filled(seed=3)
    disk = filled(seed=3, directory=tmp_path / "buf")
    assert isinstance(disk.arrays["obs.obs"], np.memmap)
    assert (tmp_path / "buf" / "obs.obs.npy").is_file()
    _same(mem, disk)
    disk.save(tmp_path / "buf")  # in place: flush + JSON only
    again = Replay.load(tmp_path / "buf", directory=tmp_path / "buf")
    moved = Replay.load(tmp_path / "buf", directory=tmp_path / "other")
    mem_copy = Replay.load(tmp_path / "buf")
    assert isinstance(again.arrays["reward"], np.memmap)
    assert isinstance(moved.arrays["reward"], np.memmap)
    assert not isinstance(mem_copy.arrays["reward"], np.memmap)
    _same(disk, again)
    _same(moved, mem_copy)


def test_images_stay_uint8_and_dict_obs(tmp_path) -> None:
    obs_space = spaces.Dict({"image": spaces.Box(0, 255, (8, 8, 3), np.uint8), "state": VEC})
    replay = Replay(64, obs_space, spaces.Discrete(4), num_envs=2, seed=0, directory=tmp_path)
    rng = np.random.default_rng(0)
    for t in range(20):
        img = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
        first = np.full(2, t == 0)
        act = np.zeros((2, 4), np.float32) if t == 0 else np.eye(4, dtype=np.float32)[[1, 2]]
        rows = StepBatch(
            {"image": img, "state": np.zeros((2, 3), np.float32)},
            act,
            np.zeros(2, np.float32),
            first,
            np.zeros(2, bool),
            np.zeros(2, bool),
        )
        replay.add(rows)
    assert replay.arrays["obs.image"].dtype == np.uint8
    batch = replay.sample(4, 5)
    batch.validate()
    assert batch.obs["image"].dtype == torch.uint8 and batch.obs["image"].shape == (4, 5, 8, 8, 3)
    assert batch.obs["state"].dtype == torch.float32
    replay.save(tmp_path / "saved")
    loaded = Replay.load(tmp_path / "saved")
    assert loaded.obs_spec == replay.obs_spec and loaded.action_spec == replay.action_spec
    _same(replay, loaded)


def test_vector_env_rows_go_straight_in() -> None:
    env = make_vector_env("CartPole-v1", 3, seed=0)
    replay = Replay(600, env.observation_space, env.action_space, num_envs=3, seed=0)
    rows = env.reset(seed=0)
    replay.add(rows)
    for _ in range(100):
        rows = env.step(env.sample_actions())
        replay.add(rows)
    batch = replay.sample(16, 32)
    batch.validate()
    assert batch.action.shape == (16, 32, 2)
    assert (batch.action.sum(-1) == (~batch.is_first).float()).all()  # one-hot or zeros


def test_single_rows_per_env_id() -> None:
    src = Streams(2, [4, 6])
    one = Replay(100, VEC, ACT, num_envs=2, seed=0)
    two = Replay(100, VEC, ACT, num_envs=2, seed=0)
    for _ in range(30):
        rows = src.next()
        one.add(rows)
        for i in (1, 0):  # one Step at a time, in any order
            two.add(rows.row(i), env_ids=i)
    _same(one, two)
    assert len(two) == 60


@pytest.mark.parametrize("space", [VEC, spaces.Dict({"obs": VEC})], ids=["box", "dict"])
def test_add_takes_and_sample_returns_the_env_form(space, tmp_path) -> None:
    """What the env gives (an array, or a dict even when its one key is "obs") is what `add`
    takes and `sample` returns, before and after save/load; the other form is refused."""
    is_dict = isinstance(space, spaces.Dict)
    replay = Replay(100, space, ACT, num_envs=2)
    src = Streams(2, [6])
    for _ in range(8):
        rows = src.next()
        env_form = {"obs": rows.obs} if is_dict else rows.obs
        other_form = rows.obs if is_dict else {"obs": rows.obs}
        rows.obs = other_form
        with pytest.raises(SpecError, match=r"^rows.obs: expected (one array|a dict)"):
            replay.add(rows)
        rows.obs = env_form
        replay.add(rows)
    replay.save(tmp_path / "saved")
    for buf in (replay, Replay.load(tmp_path / "saved")):
        obs = buf.sample(3, 4).obs
        assert isinstance(obs, dict) == is_dict
        arr = obs["obs"] if is_dict else obs
        assert isinstance(arr, torch.Tensor) and arr.shape == (3, 4, 3)


def test_bad_input_is_rejected() -> None:
    replay = Replay(100, VEC, ACT, num_envs=2)
    src = Streams(2, [5])
    good = src.next()
    not_first = StepBatch(
        good.obs, good.action, good.reward, ~good.is_first, good.is_terminal, good.is_last
    )
    with pytest.raises(SpecError, match="is_first"):
        replay.add(not_first)
    with pytest.raises(SpecError, match="env_ids"):
        replay.add(good, env_ids=[0, 0])
    with pytest.raises(SpecError, match="env_ids"):
        replay.add(good, env_ids=[0, 2])
    with pytest.raises(SpecError, match=r"rows.obs"):
        replay.add(
            StepBatch(
                good.obs[:, :2],
                good.action,
                good.reward,
                good.is_first,
                good.is_terminal,
                good.is_last,
            )
        )
    with pytest.raises(SpecError, match="is_terminal"):
        replay.add(
            StepBatch(
                good.obs,
                good.action,
                good.reward,
                good.is_first,
                np.ones(2, bool),
                np.zeros(2, bool),
            )
        )
    with pytest.raises(SpecError, match="no stream"):
        replay.sample(2, 3)
    with pytest.raises(ConfigError, match="length"):
        replay.sample(2, 51)
    with pytest.raises(ConfigError, match="capacity"):
        Replay(1, VEC, ACT, num_envs=2)
    with pytest.raises(SpecError, match="replay.json"):
        Replay.load("/nonexistent/replay")


@settings(max_examples=40, deadline=None)
@given(
    num_envs=st.integers(1, 3),
    per_stream=st.integers(4, 24),
    steps=st.integers(4, 60),
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    length=st.integers(1, 4),
    within=st.booleans(),
)
def test_windows_match_a_reference_model(num_envs, per_stream, steps, lengths, length, within):
    replay = Replay(num_envs * per_stream, VEC, ACT, num_envs=num_envs, seed=0)
    src = Streams(num_envs, lengths)
    for _ in range(steps):
        replay.add(src.next())
    kept = [np.stack(r[-per_stream:]) for r in src.rows]  # reference: last rows per stream
    if within:  # a window fits iff some kept episode has `length` rows
        runs = [np.unique(k[:, 2], return_counts=True)[1] for k in kept]
        fits = any((r >= length).any() for r in runs)
    else:
        fits = any(len(k) >= length for k in kept)
    if not fits:
        with pytest.raises(SpecError):
            replay.sample(16, length, within_episode=within)
        return
    batch = replay.sample(16, length, within_episode=within)
    for window in batch.obs.numpy():
        stream, start = int(window[0, 0]), int(window[0, 1])
        ref = kept[stream]
        pos = int(np.searchsorted(ref[:, 1], start))
        np.testing.assert_array_equal(window, ref[pos : pos + length])
        if within:
            assert (window[:, 2] == window[0, 2]).all()

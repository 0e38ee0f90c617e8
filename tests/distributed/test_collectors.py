"""Multi-process collectors: complete in-order rows, restarts, weight versions, clean shm."""

from __future__ import annotations

import functools
import os
import secrets
import signal
import time

import collector_helpers as C
import numpy as np
import pytest
import torch

from worldflux.data.replay import Replay
from worldflux.distributed.collectors import CollectorConfig, CollectorPool

DEADLINE_S = 60.0


def _ns() -> str:
    return f"wft{secrets.token_hex(4)}"


def _poll_until(pool: CollectorPool, done, streams=None, copy=True):  # noqa: ANN001, ANN202
    """Poll until done(pool) or fail after DEADLINE_S; returns every chunk seen."""
    seen = []
    deadline = time.monotonic() + DEADLINE_S
    while not done(pool):
        if time.monotonic() > deadline:
            pytest.fail(f"collectors made no progress in {DEADLINE_S}s: {pool.stats()}")
        chunks = pool.poll(0.5, copy=copy)
        if streams is not None:
            C.check_rows(chunks, streams)
        for c in chunks:
            c.release()
        seen.extend(chunks)
    return seen


def _each_collector_sent(n: int):  # noqa: ANN202
    return lambda pool: all(s["chunks"] >= n for s in pool.stats()["collectors"])


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_two_collectors_deliver_complete_ordered_rows(start_method: str) -> None:
    ns = _ns()
    cfg = CollectorConfig(
        num_collectors=2, envs_per_collector=2, chunk_len=8, pool_slots=2,
        start_method=start_method, namespace=ns,
    )  # fmt: skip
    streams: dict = {}
    with CollectorPool(C.env_fn(), C.random_policy_fn(), cfg) as pool:
        chunks = _poll_until(pool, _each_collector_sent(4), streams, copy=(start_method == "fork"))
        assert shm_names_exist(ns)
    assert C.shm_entries(ns) == []
    for i in range(2):
        seqs = [c.seq for c in chunks if c.collector == i]
        assert seqs == list(range(len(seqs)))  # in order, no gaps
    assert sorted(k[0] for k in streams) == [0, 1, 2, 3]  # 2 collectors x 2 envs
    for rows in streams.values():
        C.assert_stream_complete(np.concatenate(rows))
    assert pool.env_steps == sum(c.num_steps for c in chunks) == 8 * 2 * len(chunks)


def shm_names_exist(ns: str) -> bool:
    names = C.shm_entries(ns)
    return any("-c0g0_" in n for n in names) and any("-c1g0_" in n for n in names)


def test_killed_collector_is_replaced_and_shm_is_clean() -> None:
    ns = _ns()
    cfg = CollectorConfig(num_collectors=2, chunk_len=4, start_method="fork", namespace=ns)
    streams: dict = {}
    with CollectorPool(C.env_fn(0.001), C.random_policy_fn(), cfg) as pool:
        _poll_until(pool, _each_collector_sent(2), streams)
        victim = pool.pid(0)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _poll_until(pool, lambda p: p.stats()["collectors"][0]["generation"] == 1, streams)
        assert pool.pid(0) != victim
        assert not [n for n in C.shm_entries(ns) if "-c0g0_" in n]  # dead one's segments gone
        before = pool.stats()["collectors"][0]["chunks"]
        _poll_until(pool, lambda p: p.stats()["collectors"][0]["chunks"] >= before + 2, streams)
        assert pool.stats()["collectors"][0]["restarts"] == 1
    assert C.shm_entries(ns) == []
    assert (0, 1) in streams  # the replacement's rows, checked like the others
    for rows in streams.values():
        C.assert_stream_complete(np.concatenate(rows))


def test_weights_flow_back_with_versions() -> None:
    ns = _ns()
    cfg = CollectorConfig(
        num_collectors=2, chunk_len=4, start_method="fork", namespace=ns, explore=False
    )
    learner = C.mlp_policy_fn(seed=1)()
    with CollectorPool(C.env_fn(0.001), C.mlp_policy_fn(seed=99), cfg, weights=learner) as pool:
        chunks = _poll_until(pool, _each_collector_sent(2))
        with torch.no_grad():
            for p in learner.parameters():
                p.add_(torch.randn_like(p))
        assert pool.publish_weights(learner) == 2
        later: list = []
        deadline = time.monotonic() + DEADLINE_S
        while not any((c.policy_versions == 2).all() for c in later if c.collector == 1):
            assert time.monotonic() < deadline, pool.stats()
            later.extend(pool.poll(0.5))
        assert C.shm_entries(ns)  # weights segments live while the pool runs
    assert C.shm_entries(ns) == []
    versions = {1: C.mlp_policy_fn(seed=1)(), 2: learner}
    _assert_actions_follow_versions(chunks + later, versions)


def _assert_actions_follow_versions(chunks: list, versions: dict) -> None:
    """Every row's action is what the learner's policy of that version picks on the prior obs."""
    for c in chunks:
        t = c.state.tensors
        v = c.policy_versions
        assert (v[:, 1:] >= v[:, :-1]).all()  # versions never go back within a chunk
        for e in range(t["reward"].shape[0]):
            for i in range(1, t["reward"].shape[1]):
                if t["is_first"][e, i] or int(v[e, i]) not in versions:
                    continue
                obs = t["obs"][e, i - 1 : i]  # a Box space: the chunk entry "obs"
                with torch.no_grad():
                    want, _ = versions[int(v[e, i])].act(
                        obs, None, explore=False, is_first=obs[:, 0]
                    )
                torch.testing.assert_close(t["action"][e, i], want[0])
    assert {int(x) for c in chunks for x in c.policy_versions.unique()} >= set(versions)


def test_real_agent_acts_in_collectors_and_takes_weights() -> None:
    pytest.importorskip("worldflux.agents.tdmpc2")
    from worldflux.agents import make_agent
    from worldflux.distributed import AgentPolicy

    env = C.CounterEnv()
    agent_fn = functools.partial(
        make_agent, "tdmpc2:debug", env.observation_space, env.action_space, 0, "cpu", None,
        {"act": "policy"},
    )  # fmt: skip
    learner = agent_fn()
    weights = AgentPolicy.acting_modules(learner)
    before = AgentPolicy(agent_fn)  # version 1: the same seeded initial weights
    cfg = CollectorConfig(
        num_collectors=2, chunk_len=4, start_method="fork", namespace=_ns(), explore=False
    )
    with CollectorPool(C.env_fn(), functools.partial(AgentPolicy, agent_fn), cfg, weights) as pool:
        chunks = _poll_until(pool, _each_collector_sent(1))
        with torch.no_grad():
            for p in weights.parameters():
                p.add_(0.5 * torch.randn_like(p))
        version = pool.publish_weights(weights)
        deadline = time.monotonic() + DEADLINE_S
        while not any((c.policy_versions == version).all() for c in chunks):
            assert time.monotonic() < deadline, pool.stats()
            chunks.extend(pool.poll(0.5))
    _assert_actions_follow_versions(chunks, {1: before, 2: AgentPolicy(lambda: learner)})


def test_weight_versions_are_never_read_torn() -> None:
    ns = _ns()
    cfg = CollectorConfig(
        num_collectors=2, chunk_len=4, start_method="fork", namespace=ns, weight_slots=2
    )
    learner = C.ConstPolicy()
    with torch.no_grad():
        learner.w.fill_(1.0)
    chunks: list = []
    with CollectorPool(C.env_fn(), C.ConstPolicy, cfg, weights=learner) as pool:
        for version in range(2, 16):  # faster than the collectors can take them all
            with torch.no_grad():
                learner.w.fill_(float(version))
            assert pool.publish_weights(learner) == version
            chunks.extend(pool.poll(0.01))
        deadline = time.monotonic() + DEADLINE_S
        while {c.collector for c in chunks if (c.policy_versions == 15).all()} != {0, 1}:
            assert time.monotonic() < deadline, pool.stats()
            chunks.extend(pool.poll(0.5))
    assert C.shm_entries(ns) == []
    seen = set()
    for c in chunks:
        w, v = c.state.tensors["agent/w"], c.policy_versions.float()
        # Row t's State comes from the weights that then chose a_t, stored in row t + 1
        # (a reset row's zero action was chosen by nobody: it gets the current version).
        chosen = ~c.state.tensors["is_first"][:, 1:]
        torch.testing.assert_close(w[:, :-1, 0][chosen], v[:, 1:][chosen])
        torch.testing.assert_close(w[..., 0], w[..., 1])  # min == max: never a mix of versions
        seen |= {int(x) for x in w[..., 0].unique()}
    assert 15 in seen and len(seen) >= 2


def test_feed_adds_rows_to_a_replay() -> None:
    cfg = CollectorConfig(num_collectors=2, chunk_len=4, start_method="fork", namespace=_ns())
    obs_space = C.CounterEnv().observation_space
    replay = Replay(1000, obs_space, C.CounterEnv().action_space, num_envs=2)
    with CollectorPool(C.env_fn(), C.random_policy_fn(), cfg) as pool:
        added = 0
        deadline = time.monotonic() + DEADLINE_S
        while added < 64 or replay.counts.min() == 0:  # both collectors delivered
            assert time.monotonic() < deadline
            added += C.feed(pool, replay, timeout=0.5)
    assert len(replay) == added and replay.counts.min() > 0
    batch = replay.sample(4, 3)
    assert batch.shape == (4, 3)


def test_feed_stores_the_policy_version_that_acted_each_row() -> None:
    """A replay with ``track_versions`` keeps, per row, the version whose action the row holds."""
    cfg = CollectorConfig(
        num_collectors=2, chunk_len=4, start_method="fork", namespace=_ns(), explore=False
    )
    env = C.CounterEnv()
    replay = Replay(4000, env.observation_space, env.action_space, num_envs=2, track_versions=True)
    learner = C.mlp_policy_fn(seed=1)()
    versions = {1: C.mlp_policy_fn(seed=1)(), 2: learner}
    deadline = time.monotonic() + DEADLINE_S
    with CollectorPool(C.env_fn(0.001), C.mlp_policy_fn(seed=99), cfg, weights=learner) as pool:
        while replay.counts.min() < 8:
            assert time.monotonic() < deadline, pool.stats()
            C.feed(pool, replay, timeout=0.5)
        with torch.no_grad():
            for p in learner.parameters():
                p.add_(torch.randn_like(p))
        assert pool.publish_weights(learner) == 2

        def newest(e: int) -> int:  # version of stream e's latest row
            last = e * replay.stream_capacity + replay.counts[e] - 1
            return int(replay.policy_versions(np.asarray(last)))

        while min(newest(0), newest(1)) < 2:
            assert time.monotonic() < deadline, pool.stats()
            C.feed(pool, replay, timeout=0.5)
    for e in range(2):
        idx = e * replay.stream_capacity + np.arange(replay.counts[e])  # chronological
        v = replay.policy_versions(idx)
        assert (v >= 1).all() and (np.diff(v) >= 0).all(), v  # never back in time per stream
        assert {1, 2} <= set(v.tolist())
        obs, act = replay.arrays["obs.obs"][idx], replay.arrays["action"][idx]
        first = replay.arrays["is_first"][idx]
        for i in np.flatnonzero(~first[1:]) + 1:  # rows holding an action someone chose
            prev = torch.from_numpy(obs[i - 1 : i])
            with torch.no_grad():
                want, _ = versions[int(v[i])].act(
                    prev, None, explore=False, is_first=prev[:, 0] > 0
                )
            np.testing.assert_allclose(act[i], want[0].numpy())


def test_step_batches_follow_the_chunk_layout() -> None:
    from worldflux.core.state import State
    from worldflux.distributed.transport import Chunk

    E, T = 2, 3
    tensors = {
        "obs": torch.arange(E * T * 4, dtype=torch.float32).view(E, T, 4),
        "action": torch.rand(E, T, 2),
        "reward": torch.rand(E, T),
        "is_first": torch.tensor([[True, False, False]] * E),
        "is_terminal": torch.zeros(E, T, dtype=torch.bool),
        "is_last": torch.tensor([[False, False, True]] * E),
        "policy_version": torch.tensor([[1, 1, 2]] * E),
        "env_step": torch.arange(T).repeat(E, 1),
    }
    chunk = Chunk(0, 0, 0, 0, State(tensors), np.array([4, 5]))
    rows = chunk.step_batches(infos=True)
    assert len(rows) == T and chunk.num_steps == E * T
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(r.obs, tensors["obs"][:, i].numpy())
        np.testing.assert_array_equal(r.action, tensors["action"][:, i].numpy())
        assert r.is_last.tolist() == [i == 2] * E
        assert [x["policy_version"] for x in r.infos] == [2 if i == 2 else 1] * E
    tensors["obs"].zero_()  # rows own their data (safe after a zero-copy release)
    assert rows[1].obs.sum() > 0


@pytest.mark.parametrize("one_key", [False, True])
def test_dict_observations_keep_their_form_through_a_chunk(one_key: bool) -> None:
    """A Dict space's observation travels as ``obs/<field>`` entries and comes back a dict,
    even when its only key is "obs" (a Box space's array travels as the entry ``obs``)."""
    from worldflux.core.state import State
    from worldflux.distributed import transport
    from worldflux.distributed.transport import Chunk

    E, T = 2, 3
    obs = (
        {"obs": torch.rand(E, T, 4)}
        if one_key
        else {"a": torch.rand(E, T, 4), "b": torch.rand(E, T, 1)}
    )
    entries = transport.obs_entries(obs)
    assert sorted(entries) == sorted(f"obs/{k}" for k in obs)
    assert list(transport.obs_entries(obs["obs" if one_key else "a"])) == ["obs"]
    tensors = {
        **entries,
        "action": torch.rand(E, T, 2),
        "reward": torch.rand(E, T),
        "is_first": torch.tensor([[True, False, False]] * E),
        "is_terminal": torch.zeros(E, T, dtype=torch.bool),
        "is_last": torch.zeros(E, T, dtype=torch.bool),
        "policy_version": torch.zeros(E, T, dtype=torch.int64),
        "env_step": torch.arange(T).repeat(E, 1),
    }
    rows = Chunk(0, 0, 0, 0, State(tensors), np.array([0, 1])).step_batches()
    for i, r in enumerate(rows):
        assert isinstance(r.obs, dict) and sorted(r.obs) == sorted(obs)
        for k, v in obs.items():
            np.testing.assert_array_equal(r.obs[k], v[:, i].numpy())


def test_mlp_policy_takes_a_vector_tensor() -> None:
    from worldflux.core.exceptions import SpecError
    from worldflux.distributed import MLPPolicy

    policy = MLPPolicy(4, 2, discrete=True)
    action, _ = policy.act(
        torch.zeros(3, 4), None, explore=False, is_first=torch.ones(3, dtype=torch.bool)
    )
    assert action.shape == (3, 2)
    with pytest.raises(SpecError, match=r"^obs: MLPPolicy expected .* got dict"):
        policy.act({"obs": torch.zeros(3, 4)}, None, explore=False, is_first=torch.ones(3))


def test_recurrent_agent_state_travels_with_its_rows() -> None:
    pytest.importorskip("worldflux.agents.dreamer")
    from worldflux.agents import make_agent
    from worldflux.distributed import AgentPolicy

    env = C.CounterEnv()
    agent_fn = functools.partial(
        make_agent, "dreamerv3:debug", env.observation_space, env.action_space, 0, "cpu"
    )
    cfg = CollectorConfig(
        num_collectors=1, envs_per_collector=2, chunk_len=6, start_method="fork", namespace=_ns()
    )
    with CollectorPool(C.env_fn(), functools.partial(AgentPolicy, agent_fn), cfg) as pool:
        chunks = _poll_until(pool, _each_collector_sent(2))
    for c in chunks:
        t = c.state.tensors
        assert {"agent/deter", "agent/stoch", "agent/prev_action"} <= set(t)
        assert t["agent/deter"].shape[:2] == (2, 6)
        # The filtered State after o_t holds a_t, which is the action stored in row t + 1.
        nxt_first = t["is_first"][:, 1:]
        torch.testing.assert_close(
            t["agent/prev_action"][:, :-1][~nxt_first], t["action"][:, 1:][~nxt_first]
        )

"""A tiny env whose observations reveal exactly which rows were produced, and checks on them.

Module-level so ``spawn`` children can import the env factory; also a script for the Ctrl-C
test (``python collector_helpers.py <namespace> <start_method>``).
"""

from __future__ import annotations

import functools
import os
import sys
import time

import numpy as np
import torch
from gymnasium import spaces

from worldflux.core.state import State
from worldflux.distributed.collectors import CollectorConfig, CollectorPool
from worldflux.distributed.policies import MLPPolicy, RandomPolicy
from worldflux.distributed.transport import Chunk
from worldflux.envs.base import Env, Step

OBS_DIM, N_ACTIONS = 4, 2


class CounterEnv(Env):
    """obs = [episode, t, length, 1]; episodes last `length` steps (terminal); reward = action.

    Every row says where it sits, so a test can prove rows arrive complete and in order.
    """

    def __init__(self, length: int = 5, delay: float = 0.0) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        self.action_space = spaces.Discrete(N_ACTIONS)
        self.length, self.delay = length, delay
        self.episode, self.t = -1, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.episode, self.t, self.length, 1.0], np.float32)

    def reset(self, seed: int | None = None) -> Step:
        self.episode, self.t = self.episode + 1, 0
        return Step(self._obs(), np.zeros(N_ACTIONS, np.float32), 0.0, True, False, False)

    def step(self, action: object) -> Step:
        if self.delay:
            time.sleep(self.delay)
        a = np.asarray(action)
        index = int(np.argmax(a)) if a.ndim == 1 else int(a)
        self.t += 1
        done = self.t >= self.length
        one_hot = np.eye(N_ACTIONS, dtype=np.float32)[index]
        return Step(self._obs(), one_hot, float(index), False, done, done)


class BrokenEnv(CounterEnv):
    """Raises on the third step: a collector bug the pool must surface, not loop on."""

    def step(self, action: object) -> Step:
        if self.t == 2:
            raise RuntimeError("BrokenEnv: simulated simulator crash")
        return super().step(action)


def failing_env(index: int) -> Env:
    """An env factory that raises: the collector dies while starting."""
    raise RuntimeError("failing_env: simulated start-up failure")


def _refuse_to_unpickle() -> None:
    raise RuntimeError("EnvFactoryLostInChild: cannot be rebuilt in the collector")


class EnvFactoryLostInChild:
    """Pickles in the learner but fails to unpickle in a ``spawn``ed child (like a factory whose
    module the child cannot import)."""

    def __reduce__(self) -> tuple:
        return (_refuse_to_unpickle, ())

    def __call__(self, index: int) -> Env:
        return CounterEnv()


class ConstPolicy(torch.nn.Module):
    """Acts randomly but reports (as its acting State) the min and max of its big weight.

    The learner publishes versions whose weight is filled with the version number, so every
    row must show min == max == its policy_version: a torn (half-overwritten) read cannot hide.
    """

    def __init__(self, size: int = 1 << 18) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(size))

    def act(self, obs, state, *, explore, is_first):  # noqa: ANN001, ANN201
        n = int(is_first.shape[0])
        summary = torch.stack([self.w.min(), self.w.max()]).expand(n, 2)  # (E, 2)
        action = torch.nn.functional.one_hot(torch.randint(N_ACTIONS, (n,)), N_ACTIONS).float()
        return action, State({"w": summary.detach().clone()})

    def acting_module(self) -> torch.nn.Module:
        return self


def counter_env(length: int, delay: float, index: int) -> CounterEnv:
    del index  # every copy is the same env
    return CounterEnv(length, delay)


def env_fn(delay: float = 0.0) -> functools.partial:
    """A collector env factory: copy index -> a `CounterEnv` of 5-step episodes."""
    return functools.partial(counter_env, 5, delay)


def broken_env(index: int) -> BrokenEnv:
    del index
    return BrokenEnv()


def random_policy_fn() -> functools.partial:
    return functools.partial(RandomPolicy, N_ACTIONS, True, 0)


def mlp_policy_fn(seed: int = 123) -> functools.partial:
    return functools.partial(MLPPolicy, OBS_DIM, N_ACTIONS, True, 16, 1, 0.0, seed)


def check_rows(chunks: list[Chunk], streams: dict[tuple[int, int], list[np.ndarray]]) -> None:
    """Append every chunk's rows to `streams[env_id]` and assert the row convention holds."""
    for c in chunks:
        t = c.state.tensors
        E, T = t["reward"].shape
        assert t["obs"].shape == (E, T, OBS_DIM)
        assert t["action"].shape == (E, T, N_ACTIONS) and t["action"].dtype == torch.float32
        for e in range(E):
            rows = np.concatenate(
                [
                    t["obs"][e].numpy(),
                    t["env_step"][e, :, None].numpy(),
                    t["is_first"][e, :, None].numpy(),
                    t["is_last"][e, :, None].numpy(),
                    t["reward"][e, :, None].numpy(),
                    t["action"][e].argmax(-1, keepdim=True).numpy(),
                    t["action"][e].sum(-1, keepdim=True).numpy(),
                ],
                1,
            )
            streams.setdefault((int(c.env_ids[e]), c.generation), []).append(rows)


def assert_stream_complete(rows: np.ndarray) -> None:
    """Columns: episode, t, length, 1, env_step, is_first, is_last, reward, argmax a, sum a."""
    env_step = rows[:, 4]
    np.testing.assert_array_equal(env_step, np.arange(env_step[0], env_step[0] + len(rows)))
    first = rows[:, 5].astype(bool)
    np.testing.assert_array_equal(first, rows[:, 1] == 0)  # reset rows exactly at t == 0
    np.testing.assert_array_equal(rows[:, 6].astype(bool), rows[:, 1] == rows[:, 2])
    nxt = rows[1:]
    prev = rows[:-1]
    same_episode = ~nxt[:, 5].astype(bool)
    np.testing.assert_array_equal(nxt[same_episode, 1], prev[same_episode, 1] + 1)
    np.testing.assert_array_equal(nxt[~same_episode, 0], prev[~same_episode, 0] + 1)
    assert (rows[first, 9] == 0).all() and (rows[~first, 9] == 1).all()  # zero / one-hot
    np.testing.assert_array_equal(rows[~first, 7], rows[~first, 8])  # reward = action taken


def shm_entries(namespace: str) -> list[str]:
    return sorted(e for e in os.listdir("/dev/shm") if e.startswith(f"worldflux_{namespace}"))


if __name__ == "__main__":  # the Ctrl-C test's learner
    import signal

    # Like a program in a terminal: Ctrl-C raises KeyboardInterrupt even when the test run
    # itself was started in the background, where shells start commands with SIGINT ignored
    # (and Python then leaves it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(1)
    cfg = CollectorConfig(num_collectors=2, namespace=sys.argv[1], start_method=sys.argv[2])
    with CollectorPool(env_fn(0.001), random_policy_fn(), cfg) as pool:
        while not pool.poll(1.0):
            pass
        print("collecting", flush=True)
        while True:
            pool.poll(1.0)


def feed(pool: CollectorPool, replay: object, timeout: float) -> int:
    """Poll once and add every received row to `replay`; -> rows added."""
    from worldflux.distributed.collector_source import add_chunk

    chunks = pool.poll(timeout, copy=False)
    return sum(len(rows) for chunk in chunks for rows in add_chunk(replay, chunk)[0])

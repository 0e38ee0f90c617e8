"""`EnvRunner`: N environment copies stepped together, with episode bookkeeping.

Observations keep the env's form (see `worldflux.core.spec`): the runner holds each env's
latest one as numpy with the spec's dtypes (`obs_to_numpy`, the check at the env boundary) and
hands the agent the stacked batch (`observe`): a (N, ...) Tensor for a Box space, a dict of
them for a Dict space. It converts model actions (one-hot / [-1, 1]) to the env's actions,
resets finished episodes itself (so the caller sees the reset observation with ``is_first``),
and can snapshot and restore the envs for exact resume.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from worldflux.core.exceptions import SpecError
from worldflux.core.spec import SINGLE_KEY, ActionSpec, Obs, ObsSpec, map_obs
from worldflux.training.env_copies import make_env_copies

EnvFn = Callable[[int], Any]  # index -> a `worldflux.envs.Env` (reset/step return `Step` rows)
NumpyObs = np.ndarray | dict[str, np.ndarray]  # one observation in the env's form


def obs_to_numpy(obs: Any, spec: ObsSpec, arg: str = "env observation") -> NumpyObs:
    """A single env observation, in its own form, as contiguous numpy with the spec's dtypes
    (uint8 images, float32 vectors); `SpecError` naming `arg` when the form is not the spec's."""
    fields = spec.fields_of(obs, arg)
    out = {}
    for key, field in spec.fields.items():
        dtype = np.uint8 if field.is_image else np.float32
        # contiguous: envs may hand out flipped or strided views that torch cannot wrap
        out[key] = np.ascontiguousarray(fields[key], dtype=dtype)
    return spec.from_fields(out)


def stack_obs(items: Sequence[NumpyObs], device: torch.device | str = "cpu") -> Obs:
    """Observations of one form stacked into a batch on `device`: (N, ...) per array."""
    first = items[0]
    if isinstance(first, Mapping):
        return {k: torch.from_numpy(np.stack([o[k] for o in items])).to(device) for k in first}
    return torch.from_numpy(np.stack(cast(Sequence[np.ndarray], items))).to(device)


def random_actions(spec: ActionSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random model-format actions (n, A): a uniform one-hot per group (Discrete,
    MultiDiscrete), fair +-1 bits (MultiBinary) or uniform in [-1, 1] (Box)."""
    if spec.discrete and not spec.multi_discrete:  # one draw per row, as before groups
        return np.eye(spec.dim, dtype=np.float32)[rng.integers(0, spec.dim, size=n)]
    if spec.discrete:
        parts = [np.eye(g, dtype=np.float32)[rng.integers(0, g, size=n)] for g in spec.groups]
        return np.concatenate(parts, axis=1)  # (n, sum of groups)
    if spec.binary:
        # uniform floats: integers(0, 2) gives visibly correlated bits within a short row
        return np.where(rng.random((n, spec.dim)) < 0.5, 1.0, -1.0).astype(np.float32)
    return rng.uniform(-1.0, 1.0, size=(n, spec.dim)).astype(np.float32)


class EnvRunner:
    """Steps `num_envs` envs made by `env_fn(i)`, seeded `seed + i` on their first reset.

    `rows` after construction and after each `step` holds the `(env index, Step)` rows to store,
    in order: a step row, then (when the episode ended) the next episode's reset row.
    `vector` says where the envs run: ``"sync"`` one after another in this process, ``"async"``
    one worker process each, stepped at once (`worldflux.training.env_copies`); the rows are the
    same. `envs` are the env copies (in async mode, handles to them) for agent hooks.
    """

    def __init__(self, env_fn: EnvFn, num_envs: int, seed: int, vector: str = "sync") -> None:
        if num_envs < 1:
            raise SpecError(f"num_envs: expected an int >= 1, got {num_envs}")
        self.copies = make_env_copies(env_fn, num_envs, vector)
        self.envs = self.copies.envs
        self.obs_spec = ObsSpec.from_space(self.copies.observation_space)
        self.action_spec = ActionSpec.from_space(self.copies.action_space)
        self.num_envs = num_envs
        self.rows: list[tuple[int, Any]] = []
        self.obs: list[NumpyObs] = []  # each env's latest observation
        self._start([seed + i for i in range(num_envs)])

    def _start(self, seeds: list[int]) -> None:
        rows = self.copies.reset(seeds)
        self.rows = list(enumerate(rows))
        self.obs = [obs_to_numpy(row.obs, self.obs_spec) for row in rows]
        self.is_first = np.ones(self.num_envs, dtype=bool)
        self.ep_return = np.zeros(self.num_envs, dtype=np.float64)
        self.ep_length = np.zeros(self.num_envs, dtype=np.int64)

    def restart(self, seeds: list[int]) -> None:
        """Start a fresh episode in every env (env i reset with ``seeds[i]``); fills `rows`."""
        if len(seeds) != self.num_envs:
            raise SpecError(f"seeds: expected {self.num_envs} seeds, got {len(seeds)}")
        self._start([int(s) for s in seeds])

    def observe(self, device: torch.device | str) -> tuple[Obs, Tensor]:
        """What the agent acts on, on `device`: the current observations stacked in the env's
        form ((N, ...), or a dict of those) and ``is_first`` (N,) bool."""
        is_first = torch.from_numpy(self.is_first.copy()).to(device)
        return stack_obs(self.obs, device), is_first

    def step(self, actions: np.ndarray) -> list[tuple[int, float, int]]:
        """Step every env with model-format `actions` (N, A); finished envs are reset.

        Returns (env index, return, length) of the episodes that ended; fills `rows`.
        """
        if len(actions) != self.num_envs:
            raise SpecError(f"actions: expected {self.num_envs} rows, got {len(actions)}")
        self.rows = []
        episodes = []
        for i, (row, reset_row) in enumerate(self.copies.advance(actions)):
            self.rows.append((i, row))
            self.ep_return[i] += float(row.reward)
            self.ep_length[i] += 1
            self.is_first[i] = False
            if reset_row is not None:
                episodes.append((i, float(self.ep_return[i]), int(self.ep_length[i])))
                self.ep_return[i], self.ep_length[i] = 0.0, 0
                row = reset_row
                self.rows.append((i, row))
                self.is_first[i] = True
            self.obs[i] = obs_to_numpy(row.obs, self.obs_spec)
        return episodes

    def state_dict(self) -> dict[str, Any]:
        return {
            "envs": self.copies.capture(),
            "obs": self.obs,
            "is_first": self.is_first.copy(),
            "ep_return": self.ep_return.copy(),
            "ep_length": self.ep_length.copy(),
        }

    def load_state_dict(self, state: dict[str, Any], seeds: Sequence[int]) -> list[int]:
        """Restore `state_dict`. An env whose snapshot could not be taken (see
        `env_snapshot.capture_env`) starts a fresh episode instead, reset with ``seeds[i]``; its
        reset row is in `rows`. Returns the indices of those envs."""
        self.obs = [self._saved_obs(o) for o in state["obs"]]
        self.is_first = np.array(state["is_first"], dtype=bool)
        self.ep_return = np.array(state["ep_return"], dtype=np.float64)
        self.ep_length = np.array(state["ep_length"], dtype=np.int64)
        self.rows = []
        fresh = []
        for i, row in enumerate(self.copies.restore(state["envs"], seeds)):
            if row is None:  # restored
                continue
            fresh.append(i)
            self.rows.append((i, row))
            self.obs[i] = obs_to_numpy(row.obs, self.obs_spec)
            self.is_first[i], self.ep_return[i], self.ep_length[i] = True, 0.0, 0
        if fresh:
            name = state["envs"][fresh[0]]["restart"]
            print(
                f"resume: {name} has no get_state()/set_state() and its state is not plain "
                f"attributes, so {len(fresh)} of {self.num_envs} envs start fresh (seeded) "
                "episodes instead of continuing theirs",
                file=sys.stderr,
            )
        return fresh

    def _saved_obs(self, obs: Any) -> NumpyObs:
        """An observation from `state_dict`. Checkpoints written before observations kept the
        env's form hold a Box space's array as ``{"obs": array}``: unwrapped here."""
        if not self.obs_spec.is_dict and isinstance(obs, Mapping) and set(obs) == {SINGLE_KEY}:
            obs = obs[SINGLE_KEY]
        return map_obs(np.asarray, obs)

    def close(self) -> None:
        self.copies.close()

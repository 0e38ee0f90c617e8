"""Any trained world model as a Gymnasium env: episodes imagined by the model.

``DreamEnv(model, starts)`` is a `gymnasium.Env`; ``DreamVectorEnv(model, starts, num_envs)``
steps many imagined episodes as one batch (a `gymnasium.vector.VectorEnv`, one model call per
step for all of them). Train any Gymnasium-speaking learner inside the model, then run it in the
real env.

- ``reset`` draws a start observation from `starts` (real observations: a tensor or array of
  shape (N, *obs_shape), or a dict of those for Dict spaces, e.g.
  ``replay.sample(256, 1).obs[:, 0]``) with the env's seeded generator, and encodes it.
- ``step(action)`` applies the action through the model's imagination step (`imagine_step`:
  the prior `transition` plus the reward and continue heads). The reward is the predicted
  reward; the episode *terminates* when the predicted continue probability falls below
  `continue_threshold` (0.5) and is *truncated* after `max_steps`.
- Observations (`observation`): ``"decoded"`` gives the model's reconstruction in the real
  env's observation space (uint8 images, float vectors), so a policy trained here runs unchanged
  in the real env; ``"features"`` gives the latent features (B, F) the model's own heads read.
  ``"auto"`` (default) decodes when the family has an observation decoder (DreamerV3) and uses
  the features otherwise (TD-MPC2, JEPA).
- Actions are the real env's: `Discrete(n)` indices for discrete action specs,
  `MultiDiscrete(groups)` indices and `MultiBinary(n)` 0/1 bits for those, `Box(-1, 1)` for
  continuous ones (the model format; `worldflux.envs` adapters rescale the same way).

A family without a reward head (JEPA) is refused: there would be nothing to learn from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector.utils import batch_space
from torch import Tensor

from worldflux.core.exceptions import ConfigError, SpecError
from worldflux.core.model import WorldModel
from worldflux.core.state import State

OBS_MODES = ("auto", "decoded", "features")


class DreamVectorEnv(gymnasium.vector.VectorEnv):
    """`num_envs` imagined episodes stepped as one batch; see the module docstring.

    Episodes that end are reset within the same `step` (their returned observation is the new
    episode's first one; ``info["final_obs"]`` and ``info["_final_obs"]`` hold the last ones),
    the convention of Gymnasium's ``AutoresetMode.SAME_STEP``.
    """

    metadata = {"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP}  # noqa: RUF012

    def __init__(
        self,
        model: WorldModel,
        starts: Any,
        num_envs: int = 1,
        *,
        observation: str = "auto",
        max_steps: int = 1000,
        continue_threshold: float = 0.5,
    ) -> None:
        if "reward" not in model.heads:
            raise ConfigError(
                f"model: a {model.family} model predicts no reward (heads {list(model.heads)}); "
                "a DreamEnv needs a reward head (DreamerV3, TD-MPC2)"
            )
        if observation not in OBS_MODES:
            raise ConfigError(f"observation: expected one of {OBS_MODES}, got {observation!r}")
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ConfigError(f"num_envs: expected an int >= 1, got {num_envs!r}")
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ConfigError(f"max_steps: expected an int >= 1, got {max_steps!r}")
        if not 0.0 < continue_threshold < 1.0:
            raise ConfigError(
                f"continue_threshold: expected a probability in (0, 1), got {continue_threshold!r}"
            )
        self.model = model.eval()
        self.num_envs, self.max_steps, self.threshold = num_envs, max_steps, continue_threshold
        self.decoded = observation == "decoded" or (observation == "auto" and "obs" in model.heads)
        if self.decoded and "obs" not in model.heads:
            raise ConfigError(f"observation: a {model.family} model has no observation decoder")
        self.starts = _check_starts(starts, model)
        spec = model.action_spec
        self.single_action_space: spaces.Space = (
            spaces.MultiDiscrete(list(spec.groups)) if spec.multi_discrete
            else spaces.Discrete(spec.dim) if spec.discrete
            else spaces.MultiBinary(spec.dim) if spec.binary
            else spaces.Box(-1.0, 1.0, (spec.dim,))
        )  # fmt: skip
        self.single_observation_space = self._obs_space()
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.state: State | None = None
        self.steps = np.zeros(num_envs, np.int64)

    def _obs_space(self) -> spaces.Space:
        if not self.decoded:
            with torch.no_grad():
                dim = int(self.model.features(self.model.initial_state(1)).shape[-1])
            return spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        fields: dict[str, spaces.Space] = {
            k: spaces.Box(0, 255, f.shape, np.uint8)
            if f.is_image
            else spaces.Box(-np.inf, np.inf, f.shape, np.float32)
            for k, f in self.model.obs_spec.fields.items()
        }
        return spaces.Dict(fields) if self.model.obs_spec.is_dict else next(iter(fields.values()))

    # --- stepping -------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        del options
        super().reset(seed=seed if not isinstance(seed, list) else seed[0])
        self.state = self._encode(self._draw(self.num_envs))
        self.steps[:] = 0
        return self._observe(self.state), {}

    @torch.no_grad()
    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        if self.state is None:
            raise SpecError("step: call reset() first")
        with self._own_rng():  # the model samples latents: from the env's seeded stream
            state, preds = self.model.imagine_step(self.state, self._model_actions(actions))
        reward = preds["reward"].float().cpu().numpy().astype(np.float64)
        cont = preds.get("continue")
        terminated = (
            np.zeros(self.num_envs, bool)
            if cont is None
            else (cont.float().cpu().numpy() < self.threshold)
        )
        self.steps += 1
        truncated = (self.steps >= self.max_steps) & ~terminated
        obs, info = self._observe(state), {}
        done = terminated | truncated
        if done.any():  # same-step autoreset of the finished episodes
            info = {"final_obs": obs, "_final_obs": done}
            fresh = self._encode(self._draw(int(done.sum())))
            state = _replace_rows(state, fresh, torch.as_tensor(done))
            self.steps[done] = 0
            obs = self._observe(state)
        self.state = state
        return obs, reward, terminated, truncated, info

    # --- helpers --------------------------------------------------------------------------------

    def _draw(self, n: int) -> Any:
        idx = torch.as_tensor(self.np_random.integers(0, _count(self.starts), size=n))
        if isinstance(self.starts, dict):
            return {k: v[idx] for k, v in self.starts.items()}
        return self.starts[idx]

    @torch.no_grad()
    def _encode(self, obs: Any) -> State:
        with self._own_rng():
            return self.model.encode(obs)

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """torch's global RNG, seeded from the env's generator inside, restored outside: the same
        env seed gives the same imagined episodes, and training code's RNG is left alone."""
        device = self.model.device
        seed = int(self.np_random.integers(0, 2**63 - 1))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield

    def _model_actions(self, actions: Any) -> Tensor:
        model = self.model
        a = torch.as_tensor(np.asarray(actions), device=model.device)
        if model.action_spec.multi_discrete or model.action_spec.binary:  # indices / 0-1 bits
            a = model.action_spec.to_model(a.long().reshape(self.num_envs, -1), 1, "actions")
        elif model.action_spec.discrete:
            a = torch.nn.functional.one_hot(a.long().reshape(self.num_envs), model.action_spec.dim)
        return a.reshape(self.num_envs, model.action_spec.dim).to(model.dtype).clamp(-1.0, 1.0)

    @torch.no_grad()
    def _observe(self, state: State) -> Any:
        if not self.decoded:
            return self.model.features(state).float().cpu().numpy()
        out = self.model.decode(state, ["obs"])
        fields = self.model.obs_spec.fields
        arrays = {}
        for key, field in fields.items():
            x = out[f"obs/{key}" if self.model.obs_spec.is_dict else "obs"].float()
            if field.is_image:  # [0, 1] floats -> the env's uint8 pixels
                arrays[key] = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            else:
                arrays[key] = x.cpu().numpy()
        return arrays if self.model.obs_spec.is_dict else next(iter(arrays.values()))


class DreamEnv(gymnasium.Env):
    """One imagined episode at a time: `DreamVectorEnv` with ``num_envs=1`` behind the plain
    Gymnasium API (same arguments; see the module docstring)."""

    def __init__(self, model: WorldModel, starts: Any, **options: Any) -> None:
        self.vec = DreamVectorEnv(model, starts, 1, **options)
        self.observation_space = self.vec.single_observation_space
        self.action_space = self.vec.single_action_space

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)  # one seeded generator, shared with the batch of one
        self.vec._np_random = self.np_random
        obs, _ = self.vec.reset(options=options)
        return _row(obs), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self.vec.state is None:
            raise SpecError("step: call reset() first")
        action = np.asarray(action)[None]  # (1, ...)
        obs, reward, terminated, truncated, info = self.vec.step(action)
        if "final_obs" in info:  # the episode ended: return its last observation, as Gymnasium
            obs = info["final_obs"]
            self.vec.state = None  # the next call must be reset()
        return _row(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}


def _row(obs: Any) -> Any:
    return {k: v[0] for k, v in obs.items()} if isinstance(obs, dict) else obs[0]


def _count(starts: Any) -> int:
    return int(next(iter(starts.values())).shape[0]) if isinstance(starts, dict) else len(starts)


def _check_starts(starts: Any, model: WorldModel) -> Any:
    """`starts` as tensors on the model's device; one clear error for anything else."""
    spec = model.obs_spec
    if isinstance(starts, dict) != spec.is_dict:
        want = "a dict of arrays" if spec.is_dict else "an array"
        raise ConfigError(
            f"starts: expected {want} of real observations (N, ...), got {starts!r:.80}"
        )
    out: Any
    try:
        if isinstance(starts, dict):
            out = {k: torch.as_tensor(np.asarray(starts[k])).to(model.device) for k in spec.fields}
        else:
            out = torch.as_tensor(np.asarray(starts)).to(model.device)
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"starts: cannot read real observations from it ({err})") from err
    if _count(out) < 1:
        raise ConfigError("starts: expected at least one observation, got none")
    return out


def _replace_rows(state: State, fresh: State, rows: Tensor) -> State:
    """`state` with the rows where `rows` is True replaced by `fresh`'s rows, in order."""
    out = {}
    for key, value in state.tensors.items():
        merged = value.clone()
        merged[rows.to(value.device)] = fresh.tensors[key].to(value.dtype)
        out[key] = merged
    return State(out)

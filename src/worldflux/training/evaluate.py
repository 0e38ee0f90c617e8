"""Evaluation: real environment returns of an agent acting without exploration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldflux.agents.base import Agent
from worldflux.core.exceptions import ConfigError
from worldflux.core.spec import ObsSpec
from worldflux.training.runner import obs_to_numpy

EVAL_SEED_OFFSET = 1_000_003  # eval envs never share seeds with training envs


@torch.no_grad()
def evaluate(
    agent: Agent,
    env_fn: Callable[[int], Any],
    episodes: int,
    seed: int,
    device: torch.device | str = "cpu",
    video: str | Path | None = None,
    max_steps: int = 100_000,
) -> dict[str, Any]:
    """Run `episodes` episodes (env i seeded ``seed + EVAL_SEED_OFFSET + i``) with explore=False.

    Returns ``{"returns": [...], "lengths": [...], "return_mean", "return_std", "length_mean"}``.
    With `video`, the first episode's rendered frames are written there (GIF or MP4).
    """
    if episodes < 1:
        raise ConfigError(f"episodes: expected an int >= 1, got {episodes}")
    device = torch.device(device)
    returns, lengths = [], []
    frames: list[np.ndarray] = []
    was_training = [m.training for m in agent.modules().values()]
    agent.train(False)
    try:
        for ep in range(episodes):
            env = env_fn(ep)
            ret, length = _episode(
                agent,
                env,
                seed + EVAL_SEED_OFFSET + ep,
                device,
                frames if (video and ep == 0) else None,
                max_steps,
            )
            env.close()
            returns.append(ret)
            lengths.append(length)
    finally:
        for m, mode in zip(agent.modules().values(), was_training, strict=True):
            m.train(mode)
    if video and frames:
        from worldflux.training.video import write_video

        write_video(video, frames)
    arr = np.asarray(returns, dtype=np.float64)
    return {
        "returns": returns,
        "lengths": lengths,
        "return_mean": float(arr.mean()),
        "return_std": float(arr.std()),
        "length_mean": float(np.mean(lengths)),
    }


def _episode(
    agent: Agent,
    env: Any,
    seed: int,
    device: torch.device,
    frames: list[np.ndarray] | None,
    max_steps: int,
) -> tuple[float, int]:
    spec = ObsSpec.from_space(env.observation_space)
    row = env.reset(seed=seed)
    _set_goal(agent, env, device)
    state = None
    total, length, first = 0.0, 0, True
    while length < max_steps:
        if frames is not None:
            frames.append(env.render())
        obs = {
            k: torch.from_numpy(v[None]).to(device) for k, v in obs_to_numpy(row.obs, spec).items()
        }
        is_first = torch.tensor([first], device=device)
        action, state = agent.act(obs, state, explore=False, is_first=is_first)
        row = env.step(action[0].cpu().numpy())
        total += float(row.reward)
        length += 1
        first = False
        if row.is_last:
            break
    return total, length


def goal_layer(env: Any) -> Any:
    """The wrapper layer of `env` that has ``goal_observation()``, or None."""
    layer = env
    while not hasattr(layer, "goal_observation") and hasattr(layer, "env"):
        layer = layer.env
    return layer if hasattr(layer, "goal_observation") else None


def check_goal_envs(envs: list[Any], agent_name: str, online: bool) -> None:
    """A `ConfigError` unless every env has ``goal_observation()``, which a goal-conditioned
    agent needs to act (`online`) or to be evaluated."""
    if all(goal_layer(env) is not None for env in envs):
        return
    if online:
        raise ConfigError(
            f"env: {agent_name} plans toward a goal, but the env has no goal_observation(), so "
            f"it cannot act online. Use a goal env (e.g. worldflux/TwoRoom-v0), or train "
            f"offline: dataset=<folder recorded with worldflux.data.offline.record_tworoom> "
            f"(and eval_every=0 without a goal env)"
        )
    raise ConfigError(
        f"eval_every: {agent_name} is evaluated by planning toward the env's goal, but the env "
        f"has no goal_observation(); use a goal env or eval_every=0"
    )


def goal_observations(envs: list[Any]) -> np.ndarray:
    """The goal observation of every env, stacked (N, *obs_shape); `ConfigError` naming the
    first env without ``goal_observation()``."""
    goals = []
    for i, env in enumerate(envs):
        layer = goal_layer(env)
        if layer is None:
            raise ConfigError(
                f"env: env {i} ({type(env).__name__}) has no goal_observation(), but the agent "
                "plans toward a goal; use a goal env (e.g. worldflux/TwoRoom-v0)"
            )
        goals.append(np.asarray(layer.goal_observation()))
    return np.stack(goals)


def _set_goal(agent: Agent, env: Any, device: torch.device) -> None:
    """Goal-conditioned agents (JEPA) get the env's goal observation after each reset."""
    set_goal = getattr(agent, "set_goal", None)
    if set_goal is None:
        return
    layer = goal_layer(env)
    if layer is None:
        raise ConfigError(
            f"evaluate: {type(agent).__name__} needs a goal, but the env has no goal_observation()"
        )
    set_goal(torch.from_numpy(np.asarray(layer.goal_observation())[None]).to(device))


@torch.no_grad()
def collect_sequence(agent: Agent, env: Any, seed: int, length: int) -> Any:
    """One real sequence of up to `length` rows acted by `agent` (explore=False), as a (1, T)
    `Batch` following the row convention (stops early at the episode's end)."""
    from worldflux.core.batch import Batch

    spec = ObsSpec.from_space(env.observation_space)
    rows = [env.reset(seed=seed)]
    state = None
    while len(rows) < length and not rows[-1].is_last:
        obs = {k: torch.from_numpy(v[None]) for k, v in obs_to_numpy(rows[-1].obs, spec).items()}
        first = torch.tensor([len(rows) == 1])
        action, state = agent.act(obs, state, explore=False, is_first=first)
        rows.append(env.step(action[0].cpu().numpy()))
    obs_np = [obs_to_numpy(r.obs, spec) for r in rows]
    obs_t = {k: torch.from_numpy(np.stack([o[k] for o in obs_np]))[None] for k in spec.fields}

    def flag(name: str) -> torch.Tensor:
        return torch.tensor([[bool(getattr(r, name)) for r in rows]])

    return Batch(
        obs=obs_t if spec.is_dict else obs_t["obs"],
        action=torch.from_numpy(np.stack([r.action for r in rows]).astype(np.float32))[None],
        reward=torch.tensor([[float(r.reward) for r in rows]], dtype=torch.float32),
        is_first=flag("is_first"),
        is_terminal=flag("is_terminal"),
        is_last=flag("is_last"),
    )

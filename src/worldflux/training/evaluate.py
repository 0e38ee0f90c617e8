"""Evaluation: real environment returns of an agent acting without exploration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldflux.agents.base import Agent
from worldflux.core.exceptions import ConfigError
from worldflux.core.spec import ObsSpec, map_obs
from worldflux.training.runner import obs_to_numpy, stack_obs

EVAL_SEED_OFFSET = 1_000_003  # eval envs never share seeds with training envs


class EvalStoppedError(Exception):
    """`evaluate` was abandoned because its `stop` said so (a stop signal during a run's eval)."""


@torch.no_grad()
def evaluate(
    agent: Agent,
    env_fn: Callable[[int], Any],
    episodes: int,
    seed: int,
    device: torch.device | str = "cpu",
    video: str | Path | None = None,
    max_steps: int = 100_000,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run `episodes` episodes (env i seeded ``seed + EVAL_SEED_OFFSET + i``) with explore=False.

    Returns ``{"returns": [...], "lengths": [...], "return_mean", "return_std", "length_mean"}``.
    With `video`, the first episode's rendered frames are written there (GIF or MP4). `stop` is
    asked before every env step; when it says True the evaluation raises `EvalStoppedError` (envs
    closed, modules back in their modes, nothing written).
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
                stop,
            )
            env.close()
            returns.append(ret)
            lengths.append(length)
    except EvalStoppedError:
        env.close()
        raise
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
    stop: Callable[[], bool] | None = None,
) -> tuple[float, int]:
    spec = ObsSpec.from_space(env.observation_space)
    row = env.reset(seed=seed)
    agent.on_episode_start([0], [env])  # e.g. a goal-conditioned agent reads the goal
    state = None
    total, length, first = 0.0, 0, True
    while length < max_steps:
        if stop is not None and stop():
            raise EvalStoppedError(f"evaluation stopped at step {length} of an episode")
        if frames is not None:
            frames.append(env.render())
        obs = stack_obs([obs_to_numpy(row.obs, spec)], device)  # (1, ...)
        is_first = torch.tensor([first], device=device)
        action, state = agent.act(obs, state, explore=False, is_first=is_first)
        row = env.step(action[0].cpu().numpy())
        total += float(row.reward)
        length += 1
        first = False
        if row.is_last:
            break
    return total, length


@torch.no_grad()
def collect_sequence(
    agent: Agent, env: Any, seed: int, length: int, device: torch.device | str = "cpu"
) -> Any:
    """One real sequence of up to `length` rows acted by `agent` (explore=False), as a (1, T)
    `Batch` on `device` following the row convention (stops early at the episode's end)."""
    from worldflux.core.batch import Batch

    spec = ObsSpec.from_space(env.observation_space)
    rows = [env.reset(seed=seed)]
    state = None
    while len(rows) < length and not rows[-1].is_last:
        obs = stack_obs([obs_to_numpy(rows[-1].obs, spec)], device)  # (1, ...)
        first = torch.tensor([len(rows) == 1], device=device)
        action, state = agent.act(obs, state, explore=False, is_first=first)
        rows.append(env.step(action[0].cpu().numpy()))
    seq = stack_obs([obs_to_numpy(r.obs, spec) for r in rows])  # (T, ...)

    def flag(name: str) -> torch.Tensor:
        return torch.tensor([[bool(getattr(r, name)) for r in rows]])

    return Batch(
        obs=map_obs(lambda t: t[None], seq),  # (T, ...) -> (1, T, ...)
        action=torch.from_numpy(np.stack([r.action for r in rows]).astype(np.float32))[None],
        reward=torch.tensor([[float(r.reward) for r in rows]], dtype=torch.float32),
        is_first=flag("is_first"),
        is_terminal=flag("is_terminal"),
        is_last=flag("is_last"),
    ).to(device)

"""What a checkpointed policy does in its env: per eval episode, the return, each action dim's
mean and spread, how often it sits at the bound, and for dm_control reacher tasks the finger's
distance to the target (start, closest, end). Tells a collapsed policy (one constant action
whatever the observation) from one that explores or sweeps. The episodes are `worldflux eval`'s
(`worldflux.training.evaluate.evaluate`, same seeds), seen through a recording env.

    MUJOCO_GL=egl python benchmarks/policy_probe.py RUN_DIR_OR_CHECKPOINT [--episodes 6]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from worldflux.agents.io import load_run_agent
from worldflux.core.exceptions import WorldFluxError
from worldflux.training.config import seed_everything
from worldflux.training.evaluate import evaluate
from worldflux.training.run import env_factory


def physics_of(env: Any) -> Any:
    """The dm_control physics under the wrappers, or None."""
    for _ in range(8):
        if env is None:
            return None
        if hasattr(env, "physics"):
            return env.physics
        env = getattr(env, "env", None)
    return None


class Recording:
    """An env that records the actions it is given and, on reacher, the finger's distance."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.actions: list[np.ndarray] = []
        self.dists: list[float] = []
        physics = physics_of(env)
        self.distance = getattr(physics, "finger_to_target_dist", None)

    def step(self, action: Any) -> Any:
        self.actions.append(np.asarray(action).copy())
        row = self.env.step(action)
        if self.distance is not None:
            self.dists.append(float(self.distance()))
        return row

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


def probe(checkpoint: str, episodes: int, seed: int) -> None:
    agent, config = load_run_agent(checkpoint)
    make, envs = env_factory(config), []

    def recording(i: int) -> Recording:
        envs.append(Recording(make(i)))
        return envs[-1]

    seed_everything(seed)  # as `worldflux eval`: the agent samples from the global RNGs
    returns = evaluate(agent, recording, episodes, seed)["returns"]
    for ep, (ret, env) in enumerate(zip(returns, envs, strict=True)):
        a, d = np.asarray(env.actions), env.dists
        bound = np.mean(np.abs(a) > 0.99)
        line = (f"episode {ep}: return {ret:.0f}, action mean {a.mean(0).round(2)}, "
                f"std {a.std(0).round(2)}, at the bound {bound:.2f}")  # fmt: skip
        if d:
            line += f", distance start {d[0]:.3f} closest {min(d):.3f} end {d[-1]:.3f}"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a run dir (its latest checkpoint) or a checkpoint dir")
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="the eval seeds, as `worldflux eval`")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        probe(args.checkpoint, args.episodes, args.seed)
    except WorldFluxError as err:
        raise SystemExit(f"policy_probe: {err}") from None


if __name__ == "__main__":
    main()

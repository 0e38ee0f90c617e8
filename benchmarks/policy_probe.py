"""What a checkpointed policy does in its env: per eval episode, the return, each action dim's
mean and spread, how often it sits at the bound, and for dm_control reacher tasks the finger's
distance to the target (start, closest, end). Tells a collapsed policy (one constant action
whatever the observation) from one that explores or sweeps.

    MUJOCO_GL=egl python benchmarks/policy_probe.py RUN_DIR_OR_CHECKPOINT [--episodes 6]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from worldflux.agents.io import load_run_agent
from worldflux.core.exceptions import WorldFluxError
from worldflux.core.spec import ObsSpec
from worldflux.training.evaluate import EVAL_SEED_OFFSET
from worldflux.training.run import env_factory
from worldflux.training.runner import obs_to_numpy, stack_obs


def physics_of(env: Any) -> Any:
    """The dm_control physics under the wrappers, or None."""
    for _ in range(8):
        if env is None:
            return None
        if hasattr(env, "physics"):
            return env.physics
        env = getattr(env, "env", None)
    return None


@torch.no_grad()
def probe(checkpoint: str, episodes: int, seed: int) -> None:
    agent, config = load_run_agent(checkpoint)
    make = env_factory(config)
    for module in agent.modules().values():
        module.train(False)
    for ep in range(episodes):
        env = make(ep)
        spec = ObsSpec.from_space(env.observation_space)
        row, state, first = env.reset(seed=seed + EVAL_SEED_OFFSET + ep), None, True
        physics = physics_of(env)
        total, actions, dists = 0.0, [], []
        while True:
            obs = stack_obs([obs_to_numpy(row.obs, spec)], "cpu")
            action, state = agent.act(obs, state, explore=False, is_first=torch.tensor([first]))
            actions.append(action[0].numpy().copy())
            row, first = env.step(action[0].numpy()), False
            total += float(row.reward)
            if physics is not None and hasattr(physics, "finger_to_target_dist"):
                dists.append(float(physics.finger_to_target_dist()))
            if row.is_last:
                break
        env.close()
        a = np.asarray(actions)
        bound = np.mean(np.abs(a) > 0.99)
        line = (f"episode {ep}: return {total:.0f}, action mean {a.mean(0).round(2)}, "
                f"std {a.std(0).round(2)}, at the bound {bound:.2f}")  # fmt: skip
        if dists:
            start, close, end = dists[0], min(dists), dists[-1]
            line += f", distance start {start:.3f} closest {close:.3f} end {end:.3f}"
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

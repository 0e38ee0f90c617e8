"""PPO trained inside a world model, evaluated in the real env, beside PPO trained on the real env.

    OMP_NUM_THREADS=1 python benchmarks/dream_ppo.py RUN_DIR --dream-steps 200000

RUN_DIR holds a trained DreamerV3 CartPole-v1 run (e.g. the ``[lr10]`` curve's seed of
``benchmarks/learn.py``). stable-baselines3 PPO (the ``sb3`` extra, default hyperparameters)
learns inside `DreamVectorEnv` (16 imagined episodes per batch, starting from the encodings of
real reset observations, the model's decoded observations), then plays the real env. The
baseline is the same PPO trained on the real env for as many real steps as the world model saw.
Both are evaluated over 20 real episodes with deterministic actions. Writes
``benchmarks/results/dream_ppo.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

try:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecEnv
except ImportError:  # the optional extra
    sys.exit("dream_ppo.py needs stable-baselines3: pip install 'worldflux[sb3]'")

RESULTS = Path(__file__).resolve().parent / "results"


class DreamVecEnv(VecEnv):
    """stable-baselines3's VecEnv interface over a `DreamVectorEnv` (one model call per step)."""

    def __init__(self, dream: Any) -> None:
        super().__init__(dream.num_envs, dream.single_observation_space, dream.single_action_space)
        self.dream, self.actions = dream, None

    def reset(self) -> np.ndarray:
        obs, _ = self.dream.reset(seed=int(np.random.randint(2**31 - 1)))
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self.actions = actions

    def step_wait(self) -> Any:
        obs, reward, term, trunc, info = self.dream.step(self.actions)
        done = term | trunc
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(done):  # SB3 bootstraps truncated episodes from these
            infos[i] = {"terminal_observation": info["final_obs"][i],
                        "TimeLimit.truncated": bool(trunc[i])}  # fmt: skip
        return obs, reward.astype(np.float32), done, infos

    def close(self) -> None:
        pass

    def get_attr(self, name: str, indices: Any = None) -> list[Any]:
        return [getattr(self.dream, name)] * self.num_envs

    def set_attr(self, name: str, value: Any, indices: Any = None) -> None:
        setattr(self.dream, name, value)

    def env_method(self, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        return [None] * self.num_envs

    def env_is_wrapped(self, wrapper_class: Any, indices: Any = None) -> list[bool]:
        return [False] * self.num_envs


def evaluate(policy: Any, env_id: str, episodes: int, seed: int) -> float:
    env = gym.make(env_id)
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            action, _ = policy.predict(obs, deterministic=True)
            obs, reward, term, trunc, _ = env.step(action)
            total += float(reward)
            done = term or trunc
        returns.append(total)
    return float(np.mean(returns))


def main(argv: list[str]) -> None:
    import worldflux
    from worldflux.envs import DreamVectorEnv, make_env

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="DreamerV3 CartPole-v1 run dir or checkpoint")
    parser.add_argument("--dream-steps", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    agent = worldflux.load_agent(args.run)
    real_steps = int(json.loads((args.run / "run.json").read_text())["trainer"]["steps"])
    env_id = "CartPole-v1"
    real = make_env(env_id)
    starts = np.stack([real.reset(seed=10_000 + i).obs for i in range(1024)])
    dream = DreamVectorEnv(agent.model, starts, 16, max_steps=500)
    t0 = time.time()
    ppo = PPO("MlpPolicy", DreamVecEnv(dream), seed=args.seed, verbose=0)
    ppo.learn(args.dream_steps)
    dream_s = time.time() - t0
    t0 = time.time()
    baseline = PPO("MlpPolicy", env_id, seed=args.seed, verbose=0)
    baseline.learn(real_steps)
    real_s = time.time() - t0
    doc = {
        "world_model": str(args.run),
        "real_steps_of_the_world_model": real_steps,
        "dream_steps": args.dream_steps,
        "ppo_in_dream_real_return": evaluate(ppo, env_id, args.episodes, 0),
        "ppo_on_real_env_same_real_steps_return": evaluate(baseline, env_id, args.episodes, 0),
        "random_policy_return": evaluate(_Random(), env_id, args.episodes, 0),
        "episodes": args.episodes,
        "train_seconds": {"ppo_in_dream": dream_s, "ppo_real": real_s},
        "seed": args.seed,
        "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    (RESULTS / "dream_ppo.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))


class _Random:
    rng = np.random.default_rng(0)

    def predict(self, obs: Any, deterministic: bool = True) -> tuple[int, None]:
        return int(self.rng.integers(2)), None


if __name__ == "__main__":
    main(sys.argv[1:])

"""Whole-loop training throughput and the time profile of one iteration, per family.

    OMP_NUM_THREADS=1 python benchmarks/throughput.py

For each configuration: fill the replay with random seed steps (not timed), then time `measure`
learning env steps of the full loop (acting, env stepping + storing, replay sampling, updates).
Reports env steps/s and seconds per env step split into env / act / sample / update, written to
``benchmarks/results/throughput.json`` together with the load average during the run (the
machine is shared, so numbers are only comparable within one file).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"

# (label, model, env, overrides, measured env steps)
CONFIGS: list[tuple[str, str, str, list[str], int]] = [
    ("tdmpc2:1m, MPPI acting, batch 256, 1 update/step (reference schedule)", "tdmpc2:1m",
     "Pendulum-v1", ["updates_per_step=1", "episode_length=200"], 40),
    ("tdmpc2:1m, policy-prior acting, batch 128, 0.5 update/step (learning-curve runs)",
     "tdmpc2:1m", "Pendulum-v1",
     ["updates_per_step=0.5", "agent.act=policy", "agent.batch_size=128",
      "episode_length=200"], 80),
    ("dreamerv3:size1m, batch 16x64, train ratio 512 (reference)", "dreamerv3:size1m",
     "CartPole-v1", ["train_ratio=512"], 16),
    ("dreamerv3:size1m, batch 8x32, train ratio 32 (learning-curve runs)", "dreamerv3:size1m",
     "CartPole-v1", ["train_ratio=32", "agent.batch_size=8", "agent.seq_len=32"], 160),
]  # fmt: skip


def measure(model: str, env: str, overrides: list[str], steps: int, seed_steps: int = 300) -> dict:
    from worldflux.training.run import build_trainer
    from worldflux.training.run_config import parse_overrides

    items = [*overrides, f"seed_steps={seed_steps}", f"steps={seed_steps + steps}",
             "eval_every=0", "checkpoint_every=1000000000", "progress=false", "tensorboard=false",
             "save_replay=false"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(parse_overrides(model, env, items), tmp)
        trainer.train(stop_at=seed_steps)
        for k in trainer.profile:
            trainer.profile[k] = 0.0
        updates0, load0 = trainer.updates, os.getloadavg()[0]
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
    prof = trainer.profile
    return {
        "env_steps": steps,
        "updates": trainer.updates - updates0,
        "wall_s": wall,
        "env_steps_per_s": steps / wall,
        "per_env_step_s": {k: prof[k] / steps for k in ("env", "act", "sample", "update")},
        "load_average": [load0, os.getloadavg()[0]],
    }


def measure_jepa(preset: str = "jepa:small", updates: int = 20, actions: int = 20) -> dict:
    """JEPA trains offline: time dataset sampling + one update, and one CEM planning step."""
    import numpy as np

    from worldflux.agents import make_agent
    from worldflux.data.offline import OfflineDataset, RecordConfig, record_tworoom
    from worldflux.envs import GymEnv
    from worldflux.envs.tworoom import TwoRoomEnv

    env = GymEnv(TwoRoomEnv())
    agent: Any = make_agent(preset, env.observation_space, env.action_space, seed=0)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        data = OfflineDataset(record_tworoom(tmp, RecordConfig(episodes=8, episode_length=32)))
        rng = np.random.default_rng(0)
        t_sample = t_update = 0.0
        for _ in range(updates):
            t0 = time.perf_counter()
            batch = data.sample(agent.batch_size, agent.seq_len, rng)
            t1 = time.perf_counter()
            agent.update(batch)
            t_sample, t_update = t_sample + t1 - t0, t_update + time.perf_counter() - t1
    row = env.reset(seed=0)
    agent.set_goal(torch.from_numpy(env.env.unwrapped.goal_observation()[None]))
    t_act = t_env = 0.0
    state = None
    for i in range(actions):
        t0 = time.perf_counter()
        action, state = agent.act(torch.from_numpy(row.obs[None]), state, explore=False,
                                  is_first=torch.tensor([i == 0]))  # fmt: skip
        t1 = time.perf_counter()
        row = env.step(action[0].numpy())
        t_act, t_env = t_act + t1 - t0, t_env + time.perf_counter() - t1
        if row.is_last:
            row, state = env.reset(), None
    return {
        "model": preset, "env": "TwoRoom (offline dataset + CEM planning)",
        "batch": [agent.batch_size, agent.seq_len],
        "offline_updates_per_s": updates / (t_sample + t_update),
        "per_update_s": {"sample": t_sample / updates, "update": t_update / updates},
        "per_env_step_s": {"env": t_env / actions, "act": t_act / actions},
        "load_average": [load0, os.getloadavg()[0]],
    }  # fmt: skip


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    only = set(argv)
    out_file = RESULTS / "throughput.json"
    results: dict[str, Any] = json.loads(out_file.read_text()) if out_file.is_file() else {}
    for i, (label, model, env, overrides, steps) in enumerate(CONFIGS):
        if only and str(i) not in only:
            continue
        r = measure(model, env, overrides, steps)
        r.update(model=model, env=env, overrides=overrides, cpu_count=os.cpu_count(),
                 measured=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))  # fmt: skip
        results[label] = r
        split = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in r["per_env_step_s"].items())
        print(f"{label}: {r['env_steps_per_s']:.2f} env steps/s ({split})", flush=True)
        out_file.write_text(json.dumps(results, indent=1))
    if not only or "jepa" in only:
        r = measure_jepa()
        r["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results["jepa:small, offline updates (batch 32x8) + CEM goal planning"] = r
        print(
            f"jepa: {r['offline_updates_per_s']:.2f} updates/s, act "
            f"{r['per_env_step_s']['act'] * 1e3:.0f} ms/step",
            flush=True,
        )
        out_file.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])

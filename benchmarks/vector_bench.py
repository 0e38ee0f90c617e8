"""Sync vs async env stepping (``env.vector``): agent steps/s of an `EnvRunner`, random actions.

Run: OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python benchmarks/vector_bench.py \
        [--env dmc:cartpole-swingup] [--envs 1 2 4] [--seconds 20]
Prints one row per (mode, num_envs) and writes benchmarks/results/vector_bench.json. Steps are
agent steps summed over the copies (one agent step = ``action_repeat`` env steps); the worker
start-up (spawn) is timed apart from the stepping. Observations are 64x64 pixels by default.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from worldflux.envs import make_env  # noqa: E402
from worldflux.training.runner import EnvRunner, random_actions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _env(env_id: str, options: dict[str, Any], index: int) -> Any:
    del index
    return make_env(env_id, **options)


def measure(env_id: str, options: dict[str, Any], n: int, vector: str, seconds: float) -> dict:
    t0 = time.perf_counter()
    runner = EnvRunner(functools.partial(_env, env_id, options), n, 0, vector)
    start_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    try:
        runner.step(random_actions(runner.action_spec, n, rng))  # warm-up (first render)
        steps, t1 = 0, time.perf_counter()
        while time.perf_counter() - t1 < seconds:
            runner.step(random_actions(runner.action_spec, n, rng))
            steps += n
        rate = steps / (time.perf_counter() - t1)
    finally:
        runner.close()
    return {"vector": vector, "num_envs": n, "steps_per_s": rate, "start_s": start_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dmc:cartpole-swingup")
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--state", action="store_true", help="state vectors instead of pixels")
    args = parser.parse_args()
    options = {"action_repeat": 2} if args.state else {"image": True, "action_repeat": 2}
    rows = []
    for n in args.envs:
        for vector in ("sync", "async"):
            row = measure(args.env, options, n, vector, args.seconds)
            rows.append(row)
            print(
                f"{args.env} {options} num_envs={n} {vector:5s}: "
                f"{row['steps_per_s']:7.1f} agent steps/s (start-up {row['start_s']:.1f} s)",
                flush=True,
            )
    out = ROOT / "benchmarks" / "results" / "vector_bench.json"
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    out.write_text(json.dumps({"env": args.env, "options": options, "machine": machine,
                               "rows": rows}, indent=2))  # fmt: skip
    print(f"machine: {machine}; wrote {out}")


if __name__ == "__main__":
    main()
